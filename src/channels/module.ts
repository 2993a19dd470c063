/**
 * How a channel plugs into Knowpay: one module per channel folder (`src/channels/<name>/index.ts`)
 * exporting a `ChannelModule`. setup.ts lists the modules; each decides from the environment
 * whether it has real credentials, else builds its sandbox (keys generated once and stored).
 */
import type { FastifyInstance } from 'fastify';
import type { Pool } from '../store/db.ts';
import type { ChannelConnector, ChannelName } from './types.ts';

/** One channel call for the audit trail (secrets redacted by the connector). */
export interface ChannelAuditEntry {
  operation: string;
  channelReference?: string;
  request: unknown;
  response: unknown;
  error?: string;
  durationMs: number;
}

export interface ChannelDeps {
  pool: Pool;
  /** The service's own public base URL, e.g. http://127.0.0.1:4000 (notify URLs, sandbox links). */
  publicBaseUrl: string;
  /** Multiplies the sandbox's notification retry schedule (1 = the channel's real timing). */
  sandboxTimeScale: number;
  audit: (entry: ChannelAuditEntry) => void;
  env: NodeJS.ProcessEnv;
}

export interface ChannelInstance {
  connector: ChannelConnector;
  /** Present when the channel runs on its built-in sandbox: mounts it (prefix /sandbox/<channel>). */
  mountSandbox?: (app: FastifyInstance) => Promise<void>;
}

export interface ChannelModule {
  channel: ChannelName;
  /** Real credentials from deps.env when complete, else the sandbox. */
  create(deps: ChannelDeps): Promise<ChannelInstance>;
}
