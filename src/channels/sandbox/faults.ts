/**
 * Fault injection on sandbox notifications, stored in PostgreSQL so every process sees the same
 * settings. A channel's own row wins over the '*' row (set without `channel`).
 *
 * - drop_rate: chance that a notification is lost entirely (no attempt is ever made);
 * - duplicate_rate: chance that it is delivered twice (a second, independent delivery);
 * - delay_ms: every delivery attempt waits this long first;
 * - reorder: deliveries are randomly held back so that later ones overtake them.
 */
import type { FastifyPluginAsync } from 'fastify';
import type { Pool, Queryable } from '../../store/db.ts';
import { objectBody, sendSandboxError } from './errors.ts';

export interface SandboxFaults {
  channel: string;
  dropRate: number;
  duplicateRate: number;
  delayMs: number;
  reorder: boolean;
}

export const ALL_CHANNELS = '*';
export const MAX_FAULT_DELAY_MS = 600_000;
export const NO_FAULTS: Readonly<SandboxFaults> = Object.freeze({ channel: ALL_CHANNELS, dropRate: 0, duplicateRate: 0, delayMs: 0, reorder: false });

interface FaultRow {
  channel: string;
  drop_rate: number;
  duplicate_rate: number;
  delay_ms: number;
  reorder: boolean;
}

function fromRow(row: FaultRow): SandboxFaults {
  return { channel: row.channel, dropRate: row.drop_rate, duplicateRate: row.duplicate_rate, delayMs: row.delay_ms, reorder: row.reorder };
}

/** The faults in force for `channel`: its own row, else the '*' row, else none. */
export async function readFaults(db: Queryable, channel: string): Promise<SandboxFaults> {
  const { rows } = await db.query<FaultRow>(
    `SELECT channel, drop_rate, duplicate_rate, delay_ms, reorder FROM sandbox_faults
      WHERE channel = $1 OR channel = $2 ORDER BY (channel = $1) DESC LIMIT 1`,
    [channel, ALL_CHANNELS],
  );
  return rows[0] ? fromRow(rows[0]) : { ...NO_FAULTS, channel };
}

export type FaultsPatch = Partial<Omit<SandboxFaults, 'channel'>> & { channel: string };

/** Upsert: fields not given keep their stored value (or the default for a new row). */
export async function setFaults(db: Queryable, patch: FaultsPatch): Promise<SandboxFaults> {
  const { rows } = await db.query<FaultRow>(
    `INSERT INTO sandbox_faults AS f (channel, drop_rate, duplicate_rate, delay_ms, reorder)
     VALUES ($1, COALESCE($2::double precision, 0), COALESCE($3::double precision, 0), COALESCE($4::int, 0), COALESCE($5::boolean, false))
     ON CONFLICT (channel) DO UPDATE SET
       drop_rate = COALESCE($2::double precision, f.drop_rate),
       duplicate_rate = COALESCE($3::double precision, f.duplicate_rate),
       delay_ms = COALESCE($4::int, f.delay_ms),
       reorder = COALESCE($5::boolean, f.reorder),
       updated_at = now()
     RETURNING channel, drop_rate, duplicate_rate, delay_ms, reorder`,
    [patch.channel, patch.dropRate ?? null, patch.duplicateRate ?? null, patch.delayMs ?? null, patch.reorder ?? null],
  );
  return fromRow(rows[0]!);
}

/** Remove the faults of one channel, or all of them. */
export async function clearFaults(db: Queryable, channel?: string): Promise<number> {
  const { rowCount } = channel === undefined
    ? await db.query('DELETE FROM sandbox_faults')
    : await db.query('DELETE FROM sandbox_faults WHERE channel = $1', [channel]);
  return rowCount ?? 0;
}

type Parsed = { ok: true; patch: FaultsPatch } | { ok: false; param: string; message: string };

const ALLOWED_FIELDS = new Set(['channel', 'drop_rate', 'duplicate_rate', 'delay_ms', 'reorder']);
const CHANNEL_PATTERN = /^[a-z][a-z0-9_]{0,31}$/;

/** Validate the JSON body of POST /sandbox/faults. */
export function parseFaultsBody(body: unknown): Parsed {
  const obj = objectBody(body);
  if (!obj) return { ok: false, param: '', message: 'body must be a JSON object' };
  for (const key of Object.keys(obj)) if (!ALLOWED_FIELDS.has(key)) return { ok: false, param: key, message: `unknown parameter ${key}` };
  const patch: FaultsPatch = { channel: ALL_CHANNELS };
  if (obj['channel'] !== undefined) {
    if (typeof obj['channel'] !== 'string' || !CHANNEL_PATTERN.test(obj['channel'])) return { ok: false, param: 'channel', message: 'channel must be a channel name such as "alipay"' };
    patch.channel = obj['channel'];
  }
  for (const [field, key] of [['drop_rate', 'dropRate'], ['duplicate_rate', 'duplicateRate']] as const) {
    const v = obj[field];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 1) return { ok: false, param: field, message: `${field} must be a number between 0 and 1` };
    patch[key] = v;
  }
  if (obj['delay_ms'] !== undefined) {
    const v = obj['delay_ms'];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > MAX_FAULT_DELAY_MS) return { ok: false, param: 'delay_ms', message: `delay_ms must be an integer between 0 and ${MAX_FAULT_DELAY_MS}` };
    patch.delayMs = v;
  }
  if (obj['reorder'] !== undefined) {
    if (typeof obj['reorder'] !== 'boolean') return { ok: false, param: 'reorder', message: 'reorder must be a boolean' };
    patch.reorder = obj['reorder'];
  }
  return { ok: true, patch };
}

function toJson(f: SandboxFaults) {
  return {
    object: 'sandbox_faults',
    channel: f.channel === ALL_CHANNELS ? null : f.channel,
    drop_rate: f.dropRate,
    duplicate_rate: f.duplicateRate,
    delay_ms: f.delayMs,
    reorder: f.reorder,
  };
}

export interface FaultsPluginOptions {
  pool: Pool;
}

/** Routes `POST|GET|DELETE /sandbox/faults`. Register at the root (no prefix). */
export const faultsPlugin: FastifyPluginAsync<FaultsPluginOptions> = async (app, opts) => {
  const { pool } = opts;

  app.post('/sandbox/faults', async (req, reply) => {
    const parsed = parseFaultsBody(req.body);
    if (!parsed.ok) return sendSandboxError(reply, 400, 'parameter_invalid', parsed.message, parsed.param || undefined);
    const faults = await setFaults(pool, parsed.patch);
    return reply.code(200).send(toJson(faults));
  });

  app.get<{ Querystring: { channel?: string } }>('/sandbox/faults', async (req, reply) => {
    const channel = req.query.channel;
    if (channel !== undefined && !CHANNEL_PATTERN.test(channel)) return sendSandboxError(reply, 400, 'parameter_invalid', 'invalid channel', 'channel');
    return reply.send(toJson(await readFaults(pool, channel ?? ALL_CHANNELS)));
  });

  app.delete<{ Querystring: { channel?: string } }>('/sandbox/faults', async (req, reply) => {
    const channel = req.query.channel;
    if (channel !== undefined && !CHANNEL_PATTERN.test(channel)) return sendSandboxError(reply, 400, 'parameter_invalid', 'invalid channel', 'channel');
    const deleted = await clearFaults(pool, channel);
    return reply.send({ object: 'sandbox_faults', deleted });
  });
};
