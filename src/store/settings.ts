/** Small durable key/value settings (generated keys, sandbox key pairs). Create-once, race-safe. */
import type { Queryable } from './db.ts';

export async function getSetting<T>(db: Queryable, key: string): Promise<T | null> {
  const { rows } = await db.query<{ value: T }>('SELECT value FROM settings WHERE key = $1', [key]);
  return rows[0]?.value ?? null;
}

/**
 * Return the stored value for `key`, creating it with `create()` when absent. When two processes
 * race, both end up with the value that was stored first.
 */
export async function getOrCreateSetting<T>(db: Queryable, key: string, create: () => T | Promise<T>): Promise<{ value: T; created: boolean }> {
  const existing = await getSetting<T>(db, key);
  if (existing !== null) return { value: existing, created: false };
  const value = await create();
  const { rowCount } = await db.query(
    'INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING',
    [key, JSON.stringify(value)],
  );
  if (rowCount === 1) return { value, created: true };
  const stored = await getSetting<T>(db, key);
  if (stored === null) throw new Error(`setting ${key} vanished`);
  return { value: stored, created: false };
}
