/**
 * The day's bill through the App Store Server API's Get Notification History: every notification
 * Apple sent for the app with a signedDate in the UTC day [00:00, 24:00) — for today, up to now —
 * delivered or not, paged with paginationToken (20 a page), each item verified, then written as
 * one JSON line exactly as Apple answered it (bill.ts reads the file).
 *
 * - Every item's signedPayload, and the signedTransactionInfo inside it, is verified with the
 *   connector's SignedDataVerifier (Apple's chain, bundle id, environment). One item that does not
 *   verify refuses the whole download (a non-retryable ChannelError naming the item): a bill with a
 *   forged line in it would be evidence nobody can trust.
 * - A day that has not begun → non-retryable `bill_not_ready`; a day Apple no longer keeps (180
 *   days) → non-retryable `bill_too_old`.
 * - Bounded: pages (maxPages), items (MAX_BILL_LINES), bytes (BILL_MAX_BYTES), total time
 *   (BILL_DEADLINE_MS); each call has the Server API client's timeout. Written to
 *   `destination.part`, renamed when complete, removed on failure.
 */
import fs from 'node:fs';
import { once } from 'node:events';
import type { NotificationHistoryRequest, NotificationHistoryResponse } from '@apple/app-store-server-library';
import { ChannelError } from '../types.ts';
import { MAX_BILL_LINES } from '../../reconciliation/types.ts';
import { decodeJwsUnverified } from './jws.ts';

export const HISTORY_PAGE_SIZE = 20;
export const MAX_PAGES = Math.ceil(MAX_BILL_LINES / HISTORY_PAGE_SIZE) + 100;
export const BILL_MAX_BYTES = 4 * 1024 * 1024 * 1024;
export const BILL_DEADLINE_MS = 30 * 60_000;
const DAY_MS = 86_400_000;
/** Apple keeps notification history for 180 days (production). */
export const HISTORY_RETENTION_MS = 180 * DAY_MS;

export type ItemCheck = { ok: true } | { ok: false; reason: string; retryable: boolean };

export interface AppleBillDownloadDeps {
  /** One Get Notification History call; failures already mapped to ChannelError (and audited). */
  page(paginationToken: string | null, request: NotificationHistoryRequest): Promise<NotificationHistoryResponse>;
  /** Verify one signedPayload and the signed transaction inside it. */
  verify(signedPayload: string): Promise<ItemCheck>;
  now?: () => Date;
  deadlineMs?: number;
  maxPages?: number;
}

const fail = (message: string, code: string, retryable: boolean) => new ChannelError(message, 'apple_iap', code, retryable);

/** `YYYY-MM-DD` → the day's start (ms, UTC), or null. */
export function utcDayStart(billDate: string): number | null {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(billDate)) return null;
  const ms = Date.parse(`${billDate}T00:00:00Z`);
  return Number.isNaN(ms) || new Date(ms).toISOString().slice(0, 10) !== billDate ? null : ms;
}

/** Which notification an item claims to be, for the error message (read without verification). */
function claimedId(signedPayload: string): string {
  const p = decodeJwsUnverified(signedPayload)?.payload;
  const uuid = p?.['notificationUUID'];
  const type = p?.['notificationType'];
  return typeof uuid === 'string' ? `notification ${uuid.slice(0, 36)}${typeof type === 'string' ? ` (${type.slice(0, 40)})` : ''}` : 'an undecodable notification';
}

export async function downloadAppleBill(deps: AppleBillDownloadDeps, input: { billDate: string; destination: string }): Promise<void> {
  const dayStart = utcDayStart(input.billDate);
  if (dayStart === null) throw fail(`bill_date must be YYYY-MM-DD, got ${String(input.billDate).slice(0, 40)}`, 'bill_date_invalid', false);
  const now = deps.now ?? (() => new Date());
  const nowMs = now().getTime();
  if (dayStart > nowMs) throw fail(`the Apple bill of ${input.billDate} does not exist yet: that UTC day has not begun`, 'bill_not_ready', false);
  if (dayStart < nowMs - HISTORY_RETENTION_MS) {
    throw fail(`the Apple bill of ${input.billDate} cannot be downloaded: Apple keeps notification history for 180 days only`, 'bill_too_old', false);
  }
  const deadline = Date.now() + (deps.deadlineMs ?? BILL_DEADLINE_MS);
  const maxPages = deps.maxPages ?? MAX_PAGES;
  // A future endDate is read by Apple as now; the window never reaches into the next day.
  const request: NotificationHistoryRequest = { startDate: dayStart, endDate: dayStart + DAY_MS };
  const part = `${input.destination}.part`;
  const out = fs.createWriteStream(part);
  let pages = 0;
  let items = 0;
  let bytes = 0;
  let token: string | null = null;
  try {
    for (;;) {
      if (++pages > maxPages) throw fail(`more than ${maxPages} pages of notification history`, 'bill_too_large', false);
      if (Date.now() > deadline) throw fail('the Apple bill download took too long', 'bill_timeout', true);
      const body: NotificationHistoryResponse = await deps.page(token, request);
      const list = body.notificationHistory ?? [];
      if (!Array.isArray(list)) throw fail('Get Notification History answered without notificationHistory', 'invalid_response', true);
      if (list.length > HISTORY_PAGE_SIZE) throw fail(`a page of ${list.length} notifications (Apple sends at most ${HISTORY_PAGE_SIZE})`, 'invalid_response', false);
      items += list.length;
      if (items > MAX_BILL_LINES) throw fail(`more than ${MAX_BILL_LINES} notifications`, 'bill_too_large', false);
      let chunk = '';
      for (const [i, item] of list.entries()) {
        const where = `item ${i + 1} of page ${pages}`;
        const signed = (item as { signedPayload?: unknown } | null)?.signedPayload;
        if (typeof signed !== 'string' || signed === '') throw fail(`Get Notification History answered ${where} without signedPayload`, 'invalid_response', true);
        const check = await deps.verify(signed);
        if (!check.ok) {
          throw fail(
            `the Apple bill of ${input.billDate} is refused: ${where}, ${claimedId(signed)}, failed verification (${check.reason}); nothing was kept`,
            check.retryable ? 'history_verification_unavailable' : 'forged_history_item', check.retryable,
          );
        }
        chunk += JSON.stringify(item) + '\n';
      }
      if (chunk) {
        bytes += Buffer.byteLength(chunk);
        if (bytes > BILL_MAX_BYTES) throw fail('the Apple bill is larger than allowed', 'bill_too_large', false);
        if (!out.write(chunk)) await once(out, 'drain');
      }
      if (body.hasMore !== true) break;
      const next = body.paginationToken;
      if (typeof next !== 'string' || next === '') throw fail('Get Notification History said hasMore without a paginationToken', 'invalid_response', true);
      if (next === token) throw fail('Get Notification History answered the same paginationToken again', 'invalid_response', true);
      token = next;
    }
    out.end();
    await once(out, 'finish');
    await fs.promises.rename(part, input.destination);
  } catch (err) {
    out.destroy();
    await fs.promises.rm(part, { force: true });
    throw err;
  }
}
