-- Schema version 1 as smartgen 0.1 created it (SQLAlchemy create_all, postgresql), with rows as it wrote them.
CREATE TABLE contents (
	id BIGSERIAL NOT NULL, 
	content_id VARCHAR NOT NULL, 
	user_id VARCHAR NOT NULL, 
	job_id VARCHAR NOT NULL, 
	title TEXT NOT NULL, 
	body TEXT NOT NULL, 
	content_type VARCHAR NOT NULL, 
	prompt TEXT, 
	model VARCHAR, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_contents_user_created ON contents (user_id, created_at, id);
CREATE UNIQUE INDEX ux_contents_content_id ON contents (content_id);
CREATE UNIQUE INDEX ux_contents_job_id ON contents (job_id);
CREATE TABLE jobs (
	id BIGSERIAL NOT NULL, 
	job_id VARCHAR NOT NULL, 
	user_id VARCHAR NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	prompt TEXT NOT NULL, 
	content_type VARCHAR NOT NULL, 
	scheduled_for TIMESTAMP WITH TIME ZONE NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	started_at TIMESTAMP WITH TIME ZONE, 
	completed_at TIMESTAMP WITH TIME ZONE, 
	failed_at TIMESTAMP WITH TIME ZONE, 
	generated_content TEXT, 
	error TEXT, 
	model VARCHAR, 
	usage JSONB, 
	attempts INTEGER NOT NULL, 
	lease_until TIMESTAMP WITH TIME ZONE, 
	lease_owner VARCHAR, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_jobs_status_scheduled ON jobs (status, scheduled_for);
CREATE INDEX ix_jobs_user_created ON jobs (user_id, created_at, id);
CREATE INDEX ix_jobs_user_status ON jobs (user_id, status);
CREATE INDEX ix_jobs_user_updated ON jobs (user_id, updated_at);
CREATE UNIQUE INDEX ux_jobs_job_id ON jobs (job_id);
CREATE TABLE schema_version (
	id INTEGER NOT NULL, 
	version INTEGER NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE, 
	PRIMARY KEY (id)
);
CREATE TABLE users (
	user_id VARCHAR NOT NULL, 
	email VARCHAR NOT NULL, 
	password_hash VARCHAR NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (user_id)
);
CREATE UNIQUE INDEX ux_users_email ON users (email);
INSERT INTO schema_version (id, version, updated_at) VALUES (1, 1, '2026-01-11 19:34:18.356000+00');
INSERT INTO users (user_id, email, password_hash, created_at, updated_at) VALUES ('65a0411b9c1e4c0b8f3a7d21', 'ada@example.com', '$argon2id$stub', '2026-01-11 19:34:18.356000+00', '2026-01-11 19:34:18.356000+00');
INSERT INTO jobs (job_id, user_id, status, prompt, content_type, scheduled_for, created_at, updated_at, started_at, completed_at, generated_content, model, usage, attempts, lease_until, lease_owner) VALUES ('7f0c5e9a-1111-4b8e-9d1f-2a3b4c5d6e7f', '65a0411b9c1e4c0b8f3a7d21', 'completed', 'Sourdough', 'Blog Post Outline', '2026-01-11 19:35:18.356000+00', '2026-01-11 19:34:18.356000+00', '2026-01-11 19:35:20.000000+00', '2026-01-11 19:35:18.400000+00', '2026-01-11 19:35:20.000000+00', '# Sourdough', 'fake/model-1', '{"total_tokens": 7}', 1, '2026-01-11 19:36:33.400000+00', 'm0');
INSERT INTO jobs (job_id, user_id, status, prompt, content_type, scheduled_for, created_at, updated_at, attempts) VALUES ('7f0c5e9a-3333-4b8e-9d1f-2a3b4c5d6e7f', '65a0411b9c1e4c0b8f3a7d21', 'queued', 'Bread', 'Blog Post Outline', '2026-01-11 19:36:18.356000+00', '2026-01-11 19:35:18.356000+00', '2026-01-11 19:35:18.356000+00', 0);
INSERT INTO contents (content_id, user_id, job_id, title, body, content_type, prompt, model, created_at, updated_at) VALUES ('0c9d8e7f-2222-4a1b-8c3d-4e5f6a7b8c9d', '65a0411b9c1e4c0b8f3a7d21', '7f0c5e9a-1111-4b8e-9d1f-2a3b4c5d6e7f', 'Sourdough', '# Sourdough', 'Blog Post Outline', 'Sourdough', 'fake/model-1', '2026-01-11 19:34:18.356000+00', '2026-01-11 19:34:18.356000+00');
