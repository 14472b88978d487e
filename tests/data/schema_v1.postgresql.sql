-- The clbench schema version 1 (clbench 0.1.0) as PostgreSQL DDL, for the migration tests.
CREATE TABLE clbench_schema (
	id SERIAL NOT NULL, 
	application VARCHAR(32) NOT NULL, 
	version INTEGER NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id)
);

CREATE TABLE runs (
	run_id VARCHAR(64) NOT NULL, 
	config_hash VARCHAR(64) NOT NULL, 
	method VARCHAR(32) NOT NULL, 
	benchmark VARCHAR(64) NOT NULL, 
	backbone VARCHAR(32) NOT NULL, 
	buffer_size INTEGER NOT NULL, 
	mask VARCHAR(32) NOT NULL, 
	mask_on VARCHAR(16) NOT NULL, 
	seed INTEGER NOT NULL, 
	config JSON NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	started_at TIMESTAMP WITH TIME ZONE, 
	finished_at TIMESTAMP WITH TIME ZONE, 
	host VARCHAR(255), 
	pid INTEGER, 
	process_start BIGINT, 
	device VARCHAR(64), 
	versions JSON, 
	class_names JSON, 
	group_size INTEGER, 
	wall_s FLOAT, 
	error TEXT, 
	PRIMARY KEY (run_id)
);

CREATE INDEX ix_runs_method ON runs (method);

CREATE INDEX ix_runs_benchmark ON runs (benchmark);

CREATE INDEX ix_runs_status ON runs (status);

CREATE INDEX ix_runs_config_hash ON runs (config_hash);

CREATE TABLE accuracy (
	run_id VARCHAR(64) NOT NULL, 
	setting VARCHAR(16) NOT NULL, 
	after_task INTEGER NOT NULL, 
	on_task INTEGER NOT NULL, 
	accuracy FLOAT NOT NULL, 
	n_correct INTEGER NOT NULL, 
	n_total INTEGER NOT NULL, 
	PRIMARY KEY (run_id, setting, after_task, on_task), 
	FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE
);

CREATE TABLE class_accuracy (
	run_id VARCHAR(64) NOT NULL, 
	after_task INTEGER NOT NULL, 
	class_index INTEGER NOT NULL, 
	accuracy FLOAT, 
	PRIMARY KEY (run_id, after_task, class_index), 
	FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE
);

CREATE TABLE confidence (
	run_id VARCHAR(64) NOT NULL, 
	after_task INTEGER NOT NULL, 
	true_class INTEGER NOT NULL, 
	probabilities JSON NOT NULL, 
	PRIMARY KEY (run_id, after_task, true_class), 
	FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE
);

CREATE TABLE run_experiments (
	run_id VARCHAR(64) NOT NULL, 
	experiment VARCHAR(200) NOT NULL, 
	PRIMARY KEY (run_id, experiment), 
	FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE
);

CREATE INDEX ix_run_experiments_experiment ON run_experiments (experiment);

CREATE TABLE task_losses (
	run_id VARCHAR(64) NOT NULL, 
	task INTEGER NOT NULL, 
	term VARCHAR(64) NOT NULL, 
	loss FLOAT, 
	PRIMARY KEY (run_id, task, term), 
	FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE
);

CREATE TABLE task_timings (
	run_id VARCHAR(64) NOT NULL, 
	task INTEGER NOT NULL, 
	train_s FLOAT NOT NULL, 
	eval_s FLOAT NOT NULL, 
	PRIMARY KEY (run_id, task), 
	FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE
);
