"""The house's rules, checked: the shipped methods' cards are current."""

from clbench.methods.catalogue import catalogue_source


def test_the_method_catalogue_is_current():
    """The cards planning reads without torch are the classes' own attributes: after changing or
    adding a method, run `python -m clbench.methods.catalogue`."""
    from pathlib import Path

    import clbench.methods.catalogue as catalogue

    assert Path(catalogue.__file__).read_text() == catalogue_source(), (
        "the method catalogue is out of date: run `python -m clbench.methods.catalogue`")
