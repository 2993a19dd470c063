/** The Knowpay error shape (api.md) for the sandboxes' own JSON endpoints (simulate, faults). */
import type { FastifyReply } from 'fastify';

export type SandboxErrorType = 'invalid_request_error' | 'api_error';

export interface SandboxErrorBody {
  error: { type: SandboxErrorType; code: string; message: string; param?: string };
}

export function sandboxError(code: string, message: string, param?: string, type: SandboxErrorType = 'invalid_request_error'): SandboxErrorBody {
  return { error: { type, code, message, ...(param ? { param } : {}) } };
}

export function sendSandboxError(reply: FastifyReply, status: number, code: string, message: string, param?: string): FastifyReply {
  return reply.code(status).type('application/json; charset=utf-8').send(sandboxError(code, message, param));
}

/** A JSON request body as a plain object, or null when it is anything else. */
export function objectBody(body: unknown): Record<string, unknown> | null {
  return body !== null && typeof body === 'object' && !Array.isArray(body) ? (body as Record<string, unknown>) : null;
}
