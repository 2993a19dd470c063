/**
 * The PayPal sandbox's Transaction Search (`GET /v1/reporting/transactions`), answered from the
 * sandbox's own captures and refunds (tables of migrations 0012 and 0023):
 * - a capture → T0006, status S (D when the buyer's funding source declined it), at its capture
 *   time, fee_amount = −estimateFee(amount, DEFAULT_FEES.paypal) (what Knowpay estimates, and the
 *   sandbox's capture fee in two-decimal currencies), invoice_id/custom_field as the order has them;
 * - a refund → T1107 (a reversal T1106), negative amount, fee 0.00, S when COMPLETED (at its
 *   completion), P while PENDING, D when FAILED/CANCELLED (at its creation); invoice_id/custom_field
 *   as the refund request carried them; paypal_reference_id = the capture.
 * PayPal's rules: start_date and end_date required (RFC 3339, both inclusive, at most 31 days
 * apart), page_size 1–500 (default 100), page from 1; more than 10,000 results →
 * 400 RESULTSET_TOO_LARGE (narrow the dates). Times compare to the second, as PayPal reports them.
 */
import type { Queryable } from '../../store/db.ts';
import { estimateFee, DEFAULT_FEES } from '../../domain/ledger-rules.ts';
import { paypalReportTime, paypalTransactionDetail, type PayPalBillRow } from './bill.ts';
import { errorBody, newDebugId, type ErrorDetail } from './sandbox-wire.ts';

export const SEARCH_MAX_RESULTS = 10_000;
export const SEARCH_MAX_RANGE_MS = 31 * 86_400_000;
const RFC3339 = /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const FIELDS = new Set(['all', 'transaction_info', 'payer_info', 'shipping_info', 'auction_info', 'cart_info', 'incentive_info', 'store_info']);

export interface SearchAnswer { status: number; body: Record<string, unknown> }

const bad = (field: string, value: string | undefined, issue: string, description: string): SearchAnswer => ({
  status: 400,
  body: errorBody(400, [{ field, ...(value !== undefined ? { value: value.slice(0, 64) } : {}), location: 'query', issue, description } as ErrorDetail]),
});

function intParam(text: string | undefined, dflt: number, min: number, max: number): number | null {
  if (text === undefined || text === '') return dflt;
  if (!/^\d{1,10}$/.test(text)) return null;
  const n = Number(text);
  return n >= min && n <= max ? n : null;
}

interface Row {
  transaction_id: string; event_code: string; status: string; currency: string; amount_minor: string; fee: boolean;
  invoice_id: string | null; custom_id: string | null; at: Date; updated_at: Date; reference_id: string | null;
}

const UNION = `
  SELECT o.capture_id AS transaction_id, 'T0006' AS event_code, CASE WHEN o.capture_status = 'DECLINED' THEN 'D' ELSE 'S' END AS status,
         o.currency, o.amount_minor, o.capture_status <> 'DECLINED' AS fee, o.invoice_id, o.custom_id, o.captured_at AS at, o.updated_at,
         NULL::text AS reference_id
    FROM sandbox_paypal_orders o
   WHERE o.client_id = $1 AND o.capture_id IS NOT NULL AND date_trunc('second', o.captured_at) BETWEEN $2 AND $3
  UNION ALL
  SELECT r.id, CASE r.kind WHEN 'REFUND' THEN 'T1107' ELSE 'T1106' END, CASE r.status WHEN 'COMPLETED' THEN 'S' WHEN 'PENDING' THEN 'P' ELSE 'D' END,
         r.currency, -r.amount_minor, false, r.invoice_id, r.custom_id, coalesce(r.completed_at, r.created_at), r.updated_at, r.capture_id
    FROM sandbox_paypal_refunds r
   WHERE r.client_id = $1 AND date_trunc('second', coalesce(r.completed_at, r.created_at)) BETWEEN $2 AND $3`;

export async function transactionSearch(db: Queryable, clientId: string, merchantId: string, query: Record<string, string | undefined>): Promise<SearchAnswer> {
  const startText = query['start_date'];
  const endText = query['end_date'];
  if (!startText) return bad('start_date', undefined, 'MISSING_REQUIRED_PARAMETER', 'start_date is required.');
  if (!endText) return bad('end_date', undefined, 'MISSING_REQUIRED_PARAMETER', 'end_date is required.');
  if (!RFC3339.test(startText) || Number.isNaN(Date.parse(startText))) return bad('start_date', startText, 'INVALID_PARAMETER_SYNTAX', 'start_date must be an RFC 3339 date-time.');
  if (!RFC3339.test(endText) || Number.isNaN(Date.parse(endText))) return bad('end_date', endText, 'INVALID_PARAMETER_SYNTAX', 'end_date must be an RFC 3339 date-time.');
  const start = new Date(Date.parse(startText));
  const end = new Date(Date.parse(endText));
  if (end < start) return bad('end_date', endText, 'INVALID_PARAMETER_VALUE', 'end_date must not be before start_date.');
  if (end.getTime() - start.getTime() > SEARCH_MAX_RANGE_MS) return bad('end_date', endText, 'INVALID_PARAMETER_VALUE', 'The maximum supported range is 31 days.');
  const pageSize = intParam(query['page_size'], 100, 1, 500);
  if (pageSize === null) return bad('page_size', query['page_size'], 'INVALID_PARAMETER_VALUE', 'page_size must be 1 to 500.');
  const page = intParam(query['page'], 1, 1, 2_147_483_647);
  if (page === null) return bad('page', query['page'], 'INVALID_PARAMETER_VALUE', 'page must be 1 or more.');
  const fields = (query['fields'] ?? 'transaction_info').split(',').map((f) => f.trim());
  const unknown = fields.find((f) => !FIELDS.has(f));
  if (unknown !== undefined) return bad('fields', query['fields'], 'INVALID_PARAMETER_VALUE', `Unknown field ${unknown}.`);

  const refreshed = new Date();
  const { rows: [count] } = await db.query<{ n: string }>(`SELECT count(*)::text AS n FROM (${UNION}) t`, [clientId, start, end]);
  const total = Number(count?.n ?? 0);
  if (total > SEARCH_MAX_RESULTS) {
    return {
      status: 400,
      body: { name: 'RESULTSET_TOO_LARGE', message: 'Result set size is greater than the maximum limit. Change the filter criteria and try again.', debug_id: newDebugId() },
    };
  }
  const { rows } = await db.query<Row>(`SELECT * FROM (${UNION}) t ORDER BY at, transaction_id LIMIT $4 OFFSET $5`,
    [clientId, start, end, pageSize, (page - 1) * pageSize]);
  const details = rows.map((r) => {
    const amount = BigInt(r.amount_minor);
    const row: PayPalBillRow = {
      transactionId: r.transaction_id, eventCode: r.event_code, status: r.status, amountMinor: amount, currency: r.currency,
      feeMinor: r.fee ? -estimateFee(amount, DEFAULT_FEES.paypal!) : 0n, invoiceId: r.invoice_id, customField: r.custom_id,
      initiatedAt: r.at, updatedAt: r.updated_at, referenceId: r.reference_id,
    };
    const item = paypalTransactionDetail(row);
    return { ...item, transaction_info: { paypal_account_id: merchantId, ...item.transaction_info } };
  });
  return {
    status: 200,
    body: {
      transaction_details: details,
      account_number: merchantId,
      start_date: paypalReportTime(start),
      end_date: paypalReportTime(end),
      last_refreshed_datetime: paypalReportTime(refreshed),
      page,
      total_items: total,
      total_pages: Math.ceil(total / pageSize),
    },
  };
}
