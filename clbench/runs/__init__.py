"""What a run is and what it yields, without tensors: the mask specification (``mask``), the checks
of single values (``checks``), the request and its resolution (``config``: ``RunConfig``,
``resolve``), the resolved config and its identity (``resolved``), the presets resolution draws
from (``presets``) and the run's record (``results``: ``RunResult``)."""
