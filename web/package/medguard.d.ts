// Types of the page-side client (medguard.js). The result types are those
// the wasm module declares (dist/medguard_web.d.ts).
import type { Attestation, Prediction, Squeezed, VerifiedResult } from "./dist/medguard_web.js";

export type { Attestation, Prediction, Squeezed, VerifiedResult };

export interface MedguardOptions {
  /** Where worker.js is; next to medguard.js by default. */
  workerUrl?: string | URL;
  /** Where the wasm module is; dist/ next to worker.js by default. */
  wasmUrl?: string | URL;
}

/** medguard in a Web Worker. */
export declare class Medguard {
  /** SHA-256 of the wasm module the worker runs (each result's guest_sha256). */
  readonly moduleSha256: string;
  /** Starts the worker; rejects when the browser lacks wasm SIMD. */
  static start(options?: MedguardOptions): Promise<Medguard>;
  /** Verifies and loads a model directory under a trust policy; rejects with the refusal. */
  admit(
    policy: string,
    keyFiles: Record<string, string>,
    files: Map<string, Uint8Array>,
  ): Promise<Attestation>;
  /** Screens and classifies every image in a PNG, .npy or DICOM file. */
  classify(name: string | null, bytes: Uint8Array | ArrayBuffer, seed?: number): Promise<Prediction[]>;
  /** The first image in a file and its median-squeezed copy. */
  squeezed(bytes: Uint8Array | ArrayBuffer): Promise<Squeezed>;
  /** Checks a medguard server's result (or a bare receipt) with the ledger's public key. */
  verifyResult(line: string, ledgerKey: string): Promise<VerifiedResult>;
  /** Stops the worker. */
  terminate(): void;
}

/** Fetches a signed model directory: model.sig, then every file it lists. */
export declare function fetchModelDirectory(
  baseUrl: string | URL,
  options?: { fetch?: typeof fetch },
): Promise<Map<string, Uint8Array>>;
