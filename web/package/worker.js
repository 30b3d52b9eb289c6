// The worker that runs medguard: the page's thread never parses a model or
// screens an image, so it never freezes. One request at a time, in order.
// Nothing here touches the network after `init` fetched the module.
import init, { Model, Policy, setModuleDigest, verifyResult } from "./dist/medguard_web.js";

// (module (func (result v128) i32.const 0 i8x16.splat i8x16.popcnt)):
// validates only where wasm SIMD is supported.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253,
  15, 253, 98, 11,
]);

// (module (func (result v128) i32.const 0 i8x16.splat (twice more)
// f32x4.relaxed_madd)): validates only where relaxed SIMD is supported, which
// the guest core's matrix-product kernel uses for its fused multiply-add.
const RELAXED_SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 19, 1, 17, 0, 65, 0, 253,
  15, 65, 0, 253, 15, 65, 0, 253, 15, 253, 133, 2, 11,
]);

let model = null;

const ops = {
  async init({ wasmUrl, wasmBytes }) {
    if (!WebAssembly.validate(SIMD_PROBE)) {
      throw new Error(
        "this browser lacks WebAssembly SIMD (128-bit), which medguard's inference needs: " +
          "use a current Chrome, Edge, Firefox or Safari (16.4 or later)",
      );
    }
    if (!WebAssembly.validate(RELAXED_SIMD_PROBE)) {
      throw new Error(
        "this browser lacks WebAssembly relaxed SIMD, whose fused multiply-add " +
          "medguard's matrix-product kernel uses: use a current Chrome or Edge (114 or later)",
      );
    }
    // A restarted worker gets the bytes the first one fetched: the module
    // cannot change under a page, whatever the server would answer now.
    let bytes = wasmBytes;
    if (!bytes) {
      const url = wasmUrl ?? new URL("./dist/medguard_web_bg.wasm", import.meta.url);
      const response = await fetch(url);
      if (!response.ok) throw new Error(`fetching ${url}: HTTP ${response.status}`);
      bytes = new Uint8Array(await response.arrayBuffer());
    }
    await init({ module_or_path: bytes });
    return { moduleSha256: setModuleDigest(bytes), wasmBytes: bytes };
  },
  admit({ policy, keyFiles, files }) {
    text(policy, "the policy");
    const trust = new Policy(policy, new Map(Object.entries(keyFiles ?? {})));
    try {
      const admitted = Model.admit(trust, new Map(files));
      // Read before the swap: the client's idea of the model changes only
      // when this call succeeds.
      const attestation = admitted.attestation;
      model?.free();
      model = admitted;
      return attestation;
    } finally {
      trust.free();
    }
  },
  classify({ name, bytes, seed }) {
    if (!model) throw new Error("no model admitted yet");
    if (name !== undefined && name !== null) text(name, "the file name");
    // Fresh entropy for every request unless the caller reproduces one:
    // 53 bits, so that the seed in the result (a JavaScript number) is exact.
    let s = seed;
    if (s === undefined || s === null) {
      const [hi, lo] = crypto.getRandomValues(new Uint32Array(2));
      s = (hi & 0x1fffff) * 2 ** 32 + lo;
    }
    const typed = typeof s === "number" || typeof s === "bigint";
    if (!typed || !Number.isSafeInteger(Number(s)) || Number(s) < 0) {
      throw new Error(`seed ${String(s)} is not an integer from 0 to 2^53 - 1`);
    }
    return model.classify(name ?? undefined, bytes, BigInt(s));
  },
  squeezed({ bytes }) {
    if (!model) throw new Error("no model admitted yet");
    return model.squeezed(bytes);
  },
  verifyResult({ line, ledgerKey }) {
    text(line, "the result");
    text(ledgerKey, "the ledger key");
    return verifyResult(line, ledgerKey);
  },
};

/** A refusal (not a fault) for an argument of the wrong type. */
function text(value, what) {
  if (typeof value !== "string") throw new Error(`${what} must be text`);
}

let queue = Promise.resolve();
self.onmessage = (event) => {
  const { id, op, args } = event.data;
  queue = queue.then(async () => {
    try {
      const handler = ops[op];
      if (!handler) throw new Error(`unknown operation ${op}`);
      self.postMessage({ id, ok: true, value: await handler(args ?? {}) });
    } catch (e) {
      // medguard's own refusals (a Rust `Err`, or this file's checks) are
      // plain `Error`s. Anything else (a trap, which is how a Rust panic
      // ends; a stack overflow's RangeError; Firefox's InternalError) may
      // have left the module's memory half-updated: the client starts a
      // fresh worker and nothing more runs in this one.
      const fatal = !(e instanceof Error && e.constructor === Error);
      self.postMessage({ id, ok: false, fatal, error: String(e?.message ?? e) });
      if (fatal) self.close();
    }
  });
};
