/**
 * PostgreSQL access: one pool per process, versioned migrations (node-pg-migrate, SQL files), and
 * a transaction helper. Every state change in Knowpay goes through `inTransaction`.
 */
import pg from 'pg';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runner } from 'node-pg-migrate';
import { runMigrations as runQueueMigrations, Logger } from 'graphile-worker';

// bigint columns come back as strings; amounts are parsed to BigInt by the row mappers.
pg.types.setTypeParser(pg.types.builtins.INT8, (v: string) => v);

export type Pool = pg.Pool;
export type Client = pg.PoolClient;
export type Queryable = Pick<pg.Pool, 'query'> | pg.PoolClient;

const here = path.dirname(fileURLToPath(import.meta.url));
export const MIGRATIONS_DIR = path.join(here, 'migrations');

export function createPool(databaseUrl: string, max = 20): Pool {
  const pool = new pg.Pool({ connectionString: databaseUrl, max, idleTimeoutMillis: 30_000 });
  // An idle client's error (server restart) must not crash the process; the pool replaces it.
  pool.on('error', () => {});
  return pool;
}

const MIGRATION_LOCK_ID = 0x4b4e4f57; // "KNOW": one process migrates at a time, the others wait

/** Apply every pending migration. Safe when several processes start at once (advisory lock). */
export async function migrate(databaseUrl: string): Promise<void> {
  const lockClient = new pg.Client({ connectionString: databaseUrl });
  await lockClient.connect();
  try {
    await lockClient.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_ID]);
    await runner({
      databaseUrl,
      dir: MIGRATIONS_DIR,
      direction: 'up',
      migrationsTable: 'knowpay_migrations',
      count: Infinity,
      log: () => {},
      verbose: false,
      checkOrder: true,
      advisoryLockMode: 'wait',
    });
    // The job queue's own schema (graphile_worker), so jobs can be enqueued in our transactions.
    await runQueueMigrations({ connectionString: databaseUrl, logger: quietQueueLogger });
  } finally {
    await lockClient.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_ID]).catch(() => {});
    await lockClient.end();
  }
}

const quietQueueLogger = new Logger(() => () => {});

const MAX_SERIALIZATION_RETRIES = 5;

/**
 * Run `fn` in one transaction. Serialization failures and deadlocks (40001, 40P01) are retried a
 * bounded number of times; any other error rolls back and propagates.
 */
export async function inTransaction<T>(pool: Pool, fn: (client: Client) => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      const code = (err as { code?: string }).code;
      if ((code === '40001' || code === '40P01') && attempt < MAX_SERIALIZATION_RETRIES) continue;
      throw err;
    } finally {
      client.release();
    }
  }
}
