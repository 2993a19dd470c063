/**
 * A fresh, migrated PostgreSQL database per test file. The server is the embedded one started by
 * scripts/test.mjs (KNOWPAY_TEST_ADMIN_URL) or the machine's when DATABASE_URL is set.
 */
import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { createPool, migrate, type Pool } from '../../src/store/db.ts';

function adminUrl(): string {
  const url = process.env.KNOWPAY_TEST_ADMIN_URL ?? process.env.DATABASE_URL;
  if (!url) throw new Error('run tests through `npm test` (needs KNOWPAY_TEST_ADMIN_URL or DATABASE_URL)');
  return url;
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = '/' + database;
  return u.toString();
}

export interface TestDatabase {
  url: string;
  pool: Pool;
  drop(): Promise<void>;
}

export async function freshDatabase(): Promise<TestDatabase> {
  const admin = new pg.Client({ connectionString: adminUrl() });
  await admin.connect();
  const name = 'kp_test_' + randomBytes(6).toString('hex');
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = withDatabase(adminUrl(), name);
  await migrate(url);
  const pool = createPool(url);
  return {
    url,
    pool,
    async drop() {
      await pool.end();
      const a = new pg.Client({ connectionString: adminUrl() });
      await a.connect();
      await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await a.end();
    },
  };
}
