/**
 * Channel health and recent success, read from the database (so every process sees the same):
 * - health: a channel whose recent calls mostly fail is taken out of routing for a cool-down,
 *   then offered again (half-open: the next call decides);
 * - success rate: the share of recent payment attempts that succeeded, used to order channels of
 *   equal configured priority.
 * Cached per process for a few seconds: routing is on the hot path.
 */
import type { Queryable } from '../store/db.ts';
import type { ChannelName } from './types.ts';

export interface ChannelStats { healthy: boolean; successRate: number | null; recentCalls: number; recentErrors: number }

export const HEALTH_WINDOW_S = 60;
export const MIN_CALLS_FOR_VERDICT = 5;
export const ERROR_RATIO_TO_OPEN = 0.5;
export const COOL_DOWN_S = 30;
const CACHE_MS = 2000;
const SUCCESS_WINDOW_S = 3600;

/** Pure: is a channel healthy given its recent call counts and how long since its last failure? */
export function isHealthy(calls: number, errors: number, secondsSinceLastError: number | null): boolean {
  if (calls < MIN_CALLS_FOR_VERDICT || errors === 0) return true;
  if (errors / calls < ERROR_RATIO_TO_OPEN) return true;
  return secondsSinceLastError === null || secondsSinceLastError >= COOL_DOWN_S;
}

let cache: { at: number; stats: Map<string, ChannelStats> } | null = null;

export function resetChannelStatsCache(): void { cache = null; }

export async function channelStats(db: Queryable): Promise<Map<string, ChannelStats>> {
  if (cache && Date.now() - cache.at < CACHE_MS) return cache.stats;
  const calls = await db.query<{ channel: string; calls: string; errors: string; since_error: number | null }>(
    `SELECT channel, count(*) AS calls, count(*) FILTER (WHERE error IS NOT NULL) AS errors,
            extract(epoch FROM now() - max(created_at) FILTER (WHERE error IS NOT NULL))::float8 AS since_error
       FROM channel_calls WHERE created_at > now() - make_interval(secs => $1) GROUP BY channel`,
    [HEALTH_WINDOW_S],
  );
  const pays = await db.query<{ channel: string; ended: string; ok: string }>(
    `SELECT channel, count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'canceled')) AS ended,
            count(*) FILTER (WHERE status = 'succeeded') AS ok
       FROM payments WHERE created_at > now() - make_interval(secs => $1) GROUP BY channel`,
    [SUCCESS_WINDOW_S],
  );
  const stats = new Map<string, ChannelStats>();
  for (const r of calls.rows) {
    stats.set(r.channel, {
      healthy: isHealthy(Number(r.calls), Number(r.errors), r.since_error),
      successRate: null, recentCalls: Number(r.calls), recentErrors: Number(r.errors),
    });
  }
  for (const r of pays.rows) {
    const s = stats.get(r.channel) ?? { healthy: true, successRate: null, recentCalls: 0, recentErrors: 0 };
    s.successRate = Number(r.ended) > 0 ? Number(r.ok) / Number(r.ended) : null;
    stats.set(r.channel, s);
  }
  cache = { at: Date.now(), stats };
  return stats;
}

export type { ChannelName };
