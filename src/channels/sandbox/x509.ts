/**
 * Certificates for sandboxes that sign the way a channel does with a certificate chain (Apple's
 * JWS x5c chain, PayPal's webhook signing certificate). Node's crypto cannot issue X.509
 * certificates; jsrsasign can.
 */
import { randomBytes } from 'node:crypto';
import jsrsasign from 'jsrsasign';

export interface CertificateSpec {
  /** Distinguished names in jsrsasign's form: `/C=US/O=…/CN=…`. */
  issuer: string;
  subject: string;
  subjectPublicKeyPem: string;
  issuerPrivateKeyPem: string;
  sigalg: 'SHA256withECDSA' | 'SHA384withECDSA' | 'SHA256withRSA';
  notBefore: Date;
  notAfter: Date;
  ext: Array<{ extname: string; [k: string]: unknown }>;
}

/** jsrsasign's UTCTime (before 2050) or GeneralizedTime text for a date, seconds precision. */
export function asn1Time(d: Date): string {
  const digits = d.toISOString().replace(/[-:T]/g, '').slice(0, 14); // YYYYMMDDHHMMSS
  return d.getUTCFullYear() < 2050 ? `${digits.slice(2)}Z` : `${digits}Z`;
}

/** Issue a v3 certificate with a random positive serial; answered as DER and PEM. */
export function issueCertificate(spec: CertificateSpec): { der: Buffer; pem: string } {
  const cert = new jsrsasign.KJUR.asn1.x509.Certificate({
    version: 3,
    serial: { hex: '01' + randomBytes(15).toString('hex') },
    issuer: { str: spec.issuer },
    subject: { str: spec.subject },
    notbefore: asn1Time(spec.notBefore),
    notafter: asn1Time(spec.notAfter),
    sbjpubkey: spec.subjectPublicKeyPem,
    ext: spec.ext,
    sigalg: spec.sigalg,
    cakey: spec.issuerPrivateKeyPem,
  });
  return { der: Buffer.from(cert.getEncodedHex(), 'hex'), pem: cert.getPEM().replace(/\r\n/g, '\n') };
}
