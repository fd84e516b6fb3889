-- bench `--table coder`: Coder's real workspace_agents, for a database of the bench's own.
--
-- Source: coder/coder, coderd/database/dump.sql (the generated schema dump; read at
-- commit 0001d5018f9992a7cbef90ef49f2fa4a5ba79274). Kept as in the dump:
--   * every column of workspace_agents, in the dump's order, with its types, defaults,
--     CHECK constraints and the dump's fillfactor (none: 100);
--   * its 4 indexes (workspace_agents_pkey, workspace_agents_auth_instance_id_deleted_idx,
--     workspace_agents_auth_token_idx, workspace_agents_resource_id_idx);
--   * its trigger workspace_agent_name_unique_trigger and the trigger function;
--   * its 2 foreign keys (resource_id -> workspace_resources, parent_id -> itself).
-- Trimmed: the enum types keep only what these columns need; workspace_resources is
-- Coder's table without its own foreign key; workspace_builds keeps only the two
-- columns the trigger function reads. Nothing else of Coder's schema is here.
-- Run once in an empty database, before `pybatch migrate` (pybatch finds the table).

CREATE TYPE public.workspace_agent_lifecycle_state AS ENUM (
    'created', 'starting', 'start_timeout', 'start_error', 'ready',
    'shutting_down', 'shutdown_timeout', 'shutdown_error', 'off'
);
CREATE TYPE public.workspace_agent_subsystem AS ENUM ('envbuilder', 'envbox', 'none', 'exectrace');
CREATE TYPE public.display_app AS ENUM (
    'vscode', 'vscode_insiders', 'web_terminal', 'ssh_helper', 'port_forwarding_helper'
);
CREATE TYPE public.agent_key_scope_enum AS ENUM ('all', 'no_user_data');
CREATE TYPE public.workspace_transition AS ENUM ('start', 'stop', 'delete');

-- Trimmed: the two columns check_workspace_agent_name_unique() reads.
CREATE TABLE public.workspace_builds (
    id uuid NOT NULL PRIMARY KEY,
    job_id uuid NOT NULL UNIQUE
);

CREATE TABLE public.workspace_resources (
    id uuid NOT NULL,
    created_at timestamp with time zone NOT NULL,
    job_id uuid NOT NULL,
    transition public.workspace_transition NOT NULL,
    type character varying(192) NOT NULL,
    name character varying(64) NOT NULL,
    hide boolean DEFAULT false NOT NULL,
    icon character varying(256) DEFAULT ''::character varying NOT NULL,
    instance_type character varying(256),
    daily_cost integer DEFAULT 0 NOT NULL,
    module_path text
);
ALTER TABLE ONLY public.workspace_resources ADD CONSTRAINT workspace_resources_pkey PRIMARY KEY (id);
CREATE INDEX workspace_resources_job_id_idx ON public.workspace_resources USING btree (job_id);

CREATE FUNCTION public.check_workspace_agent_name_unique() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    workspace_build_id uuid;
    agents_with_name int;
BEGIN
    -- Find the workspace build the workspace agent is being inserted into.
    SELECT workspace_builds.id INTO workspace_build_id
    FROM public.workspace_resources
    JOIN public.workspace_builds ON workspace_builds.job_id = workspace_resources.job_id
    WHERE workspace_resources.id = NEW.resource_id;

    -- If the agent doesn't have a workspace build, we'll allow the insert.
    IF workspace_build_id IS NULL THEN
        RETURN NEW;
    END IF;

    -- Count how many agents in this workspace build already have the given agent name.
    SELECT COUNT(*) INTO agents_with_name
    FROM public.workspace_agents
    JOIN public.workspace_resources ON workspace_resources.id = workspace_agents.resource_id
    JOIN public.workspace_builds ON workspace_builds.job_id = workspace_resources.job_id
    WHERE workspace_builds.id = workspace_build_id
        AND workspace_agents.name = NEW.name
        AND workspace_agents.id != NEW.id
        AND workspace_agents.deleted = FALSE;

    IF agents_with_name > 0 THEN
        RAISE EXCEPTION 'workspace agent name "%" already exists in this workspace build', NEW.name
            USING ERRCODE = 'unique_violation';
    END IF;

    RETURN NEW;
END;
$$;

CREATE TABLE public.workspace_agents (
    id uuid NOT NULL,
    created_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    name character varying(64) NOT NULL,
    first_connected_at timestamp with time zone,
    last_connected_at timestamp with time zone,
    disconnected_at timestamp with time zone,
    resource_id uuid NOT NULL,
    auth_token uuid NOT NULL,
    auth_instance_id character varying,
    architecture character varying(64) NOT NULL,
    environment_variables jsonb,
    operating_system character varying(64) NOT NULL,
    instance_metadata jsonb,
    resource_metadata jsonb,
    directory character varying(4096) DEFAULT ''::character varying NOT NULL,
    version text DEFAULT ''::text NOT NULL,
    last_connected_replica_id uuid,
    connection_timeout_seconds integer DEFAULT 0 NOT NULL,
    troubleshooting_url text DEFAULT ''::text NOT NULL,
    motd_file text DEFAULT ''::text NOT NULL,
    lifecycle_state public.workspace_agent_lifecycle_state DEFAULT 'created'::public.workspace_agent_lifecycle_state NOT NULL,
    expanded_directory character varying(4096) DEFAULT ''::character varying NOT NULL,
    logs_length integer DEFAULT 0 NOT NULL,
    logs_overflowed boolean DEFAULT false NOT NULL,
    started_at timestamp with time zone,
    ready_at timestamp with time zone,
    subsystems public.workspace_agent_subsystem[] DEFAULT '{}'::public.workspace_agent_subsystem[],
    display_apps public.display_app[] DEFAULT '{vscode,vscode_insiders,web_terminal,ssh_helper,port_forwarding_helper}'::public.display_app[],
    api_version text DEFAULT ''::text NOT NULL,
    display_order integer DEFAULT 0 NOT NULL,
    parent_id uuid,
    api_key_scope public.agent_key_scope_enum DEFAULT 'all'::public.agent_key_scope_enum NOT NULL,
    deleted boolean DEFAULT false NOT NULL,
    CONSTRAINT max_logs_length CHECK ((logs_length <= 1048576)),
    CONSTRAINT subsystems_not_none CHECK ((NOT ('none'::public.workspace_agent_subsystem = ANY (subsystems))))
);

ALTER TABLE ONLY public.workspace_agents ADD CONSTRAINT workspace_agents_pkey PRIMARY KEY (id);
CREATE INDEX workspace_agents_auth_instance_id_deleted_idx ON public.workspace_agents USING btree (auth_instance_id, deleted);
CREATE INDEX workspace_agents_auth_token_idx ON public.workspace_agents USING btree (auth_token);
CREATE INDEX workspace_agents_resource_id_idx ON public.workspace_agents USING btree (resource_id);

CREATE TRIGGER workspace_agent_name_unique_trigger BEFORE INSERT OR UPDATE OF name, resource_id ON public.workspace_agents
    FOR EACH ROW EXECUTE FUNCTION public.check_workspace_agent_name_unique();

ALTER TABLE ONLY public.workspace_agents
    ADD CONSTRAINT workspace_agents_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES public.workspace_agents(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.workspace_agents
    ADD CONSTRAINT workspace_agents_resource_id_fkey FOREIGN KEY (resource_id) REFERENCES public.workspace_resources(id) ON DELETE CASCADE;

COMMENT ON TABLE public.workspace_agents IS
    'Coder''s workspace_agents (coderd/database/dump.sql), created by `pybatch bench --table coder` in its own database.';
