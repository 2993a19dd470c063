import type { Pool } from '../store/db.ts';
import type { ChannelConnector, ChannelName } from '../channels/types.ts';
import type { PaymentContext } from '../payments/payments.ts';
import type { SyncContext } from '../payments/sync.ts';

/** What routes need, built once at start. */
export interface AppContext {
  db: Pool;
  channels: ReadonlyMap<ChannelName, ChannelConnector>;
  payments: PaymentContext;
  sync: SyncContext;
  orderTtlMs: number;
}
