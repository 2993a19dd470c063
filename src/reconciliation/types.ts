/** One line of any channel's bill, normalised (ledger.md: "one line shape"). */
export interface BillLine {
  lineNo: number;
  kind: 'payment' | 'refund';
  /** Our trade number at the channel (out_trade_no). */
  channelReference: string;
  channelTransactionId?: string;
  /** Our refund number (out_request_no / out_refund_no), for refund lines. */
  refundReference?: string;
  /** Positive minor units: what was paid, or what was refunded. */
  amount: bigint;
  /** Positive minor units: the channel's fee on this line (returned fee on a refund line). */
  fee: bigint;
  currency: string;
  occurredAt?: Date;
}

/** The file is not a bill of the named channel: answered as a 400 that says why. */
export class BillFormatError extends Error {
  override name = 'BillFormatError';
}

export const MAX_BILL_LINES = 5_000_000;
