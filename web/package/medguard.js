// medguard in the browser: the page-side client. Every call is answered by a
// Web Worker (worker.js) that holds the wasm module, so the page never freezes;
// no call sends anything anywhere.

/** Restarts allowed within `RESTART_WINDOW_MS` before the client gives up. */
const MAX_RESTARTS = 3;
const RESTART_WINDOW_MS = 60_000;

/** Starts a worker and its wasm module. */
export class Medguard {
  #worker = null;
  #next = 1;
  /** id -> { op, args, resolve, reject, worker }: what a worker has not answered. */
  #pending = new Map();
  #options;
  /** The module bytes the first worker fetched; every restart reuses them. */
  #wasmBytes = null;
  /** The last successful `admit`'s arguments (copies), to admit again after a restart. */
  #admitted = null;
  /** Settles when the current worker is ready to take requests. */
  #ready = Promise.resolve();
  /** Why the client no longer serves (terminated, or a worker that cannot start). */
  #dead = null;
  /** The last worker whose module was instantiated. */
  #started = null;
  /** When the recent restarts happened. */
  #restarts = [];
  /** SHA-256 of the wasm module the worker runs. */
  moduleSha256 = "";

  constructor(options = {}) {
    this.#options = options;
  }

  /** A ready client: the worker started and its wasm module instantiated. */
  static async start(options = {}) {
    const client = new Medguard(options);
    client.#ready = client.#spawn();
    try {
      await client.#ready;
    } catch (e) {
      client.#kill(e.message);
      throw e;
    }
    return client;
  }

  /** A new worker with the module (fetched the first time only) and, after a
   *  restart, the model admitted again. A worker that fails to start is not
   *  retried: whatever stopped it (no network, a CSP without
   *  'wasm-unsafe-eval', too little memory) would stop the next one too. */
  async #spawn() {
    const url = this.#options.workerUrl ?? new URL("./worker.js", import.meta.url);
    const worker = new Worker(url, { type: "module" });
    this.#worker = worker;
    worker.onmessage = (event) => this.#settle(worker, event.data);
    let started = false;
    worker.onerror = (event) => {
      event.preventDefault?.();
      if (this.#worker !== worker) return;
      const why = `the medguard worker stopped: ${event.message ?? "unknown error"}`;
      if (started) {
        this.#restart(why);
      } else {
        this.#rejectAll(worker, why);
      }
    };
    const { moduleSha256, wasmBytes } = await this.#post(worker, "init", {
      wasmUrl: this.#options.wasmUrl,
      wasmBytes: this.#wasmBytes,
    });
    started = true;
    this.#started = worker;
    this.#wasmBytes = wasmBytes;
    this.moduleSha256 = moduleSha256;
    if (this.#admitted) await this.#post(worker, "admit", this.#admitted);
  }

  #post(worker, op, args) {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { op, args, resolve, reject, worker });
      try {
        worker.postMessage({ id, op, args });
      } catch (e) {
        // Arguments that cannot be cloned (a detached buffer, a function).
        this.#pending.delete(id);
        reject(e);
      }
    });
  }

  async #call(op, args) {
    if (this.#dead) throw new Error(this.#dead);
    await this.#ready;
    if (this.#dead) throw new Error(this.#dead);
    return this.#post(this.#worker, op, args);
  }

  #rejectAll(worker, why) {
    for (const [id, p] of this.#pending) {
      if (p.worker === worker) {
        this.#pending.delete(id);
        p.reject(new Error(why));
      }
    }
  }

  #kill(why) {
    this.#dead = why;
    this.#worker?.terminate();
    for (const p of this.#pending.values()) p.reject(new Error(why));
    this.#pending.clear();
  }

  #settle(worker, { id, ok, value, error, fatal }) {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    if (ok) {
      pending.resolve(value);
    } else if (fatal && pending.op !== "init") {
      // The instance trapped: its memory is not to be trusted. This request
      // fails; the others in flight go to a fresh worker.
      pending.reject(
        new Error(`the inference core stopped on this input (${error}) and was restarted`),
      );
      if (this.#worker === worker) this.#restart(error);
    } else {
      pending.reject(new Error(error));
    }
  }

  /** Replaces the worker; requests it had not answered are sent to the new
   *  one, in the order they were made. Gives up after `MAX_RESTARTS` within
   *  a minute: an input that stops every worker is not retried forever. */
  #restart(why) {
    const old = this.#worker;
    old?.terminate();
    const orphans = [...this.#pending.entries()].filter(([, p]) => p.worker === old);
    for (const [id] of orphans) this.#pending.delete(id);
    const now = Date.now();
    this.#restarts = this.#restarts.filter((t) => now - t < RESTART_WINDOW_MS);
    this.#restarts.push(now);
    if (this.#restarts.length > MAX_RESTARTS) {
      this.#kill(`the medguard worker stopped ${this.#restarts.length} times in a minute (${why}); start a new client`);
      for (const [, p] of orphans) p.reject(new Error(this.#dead));
      return;
    }
    const ready = this.#spawn();
    this.#ready = ready;
    ready.then(
      () => {
        for (const [, p] of orphans) {
          if (p.op === "init") p.reject(new Error(why));
          else this.#post(this.#worker, p.op, p.args).then(p.resolve, p.reject);
        }
      },
      (e) => {
        // A newer restart superseded this one: it owns the state now.
        if (this.#ready !== ready) {
          for (const [, p] of orphans) p.reject(e);
          return;
        }
        // The model could not be admitted again (its manifest expired since,
        // say), or the worker could not start: these fail with why.
        const reason = `the medguard worker was restarted but could not serve again: ${e.message}`;
        for (const [, p] of orphans) p.reject(new Error(reason));
        this.#admitted = null;
        this.#ready = Promise.resolve();
        // A worker that did not even start would swallow every later call.
        if (this.#started !== this.#worker) this.#kill(reason);
      },
    );
  }

  /**
   * Verifies and loads a model directory under a trust policy.
   * `files` maps relative paths to bytes (see `fetchModelDirectory`);
   * `keyFiles` maps the policy's `public_key_file` names to PEM text.
   * Rejects with the refusal's reason.
   */
  async admit(policy, keyFiles, files) {
    // Copies: a restart admits again, whatever the caller did to its buffers.
    const args = {
      policy,
      keyFiles: { ...keyFiles },
      files: [...files.entries()].map(([name, bytes]) => [name, new Uint8Array(bytes)]),
    };
    const attestation = await this.#call("admit", args);
    this.#admitted = args;
    return attestation;
  }

  /** Screens and classifies every image in a PNG, `.npy` or DICOM file. */
  classify(name, bytes, seed) {
    return this.#call("classify", { name, bytes: toBytes(bytes), seed });
  }

  /** The first image in a file and its median-squeezed copy. */
  squeezed(bytes) {
    return this.#call("squeezed", { bytes: toBytes(bytes) });
  }

  /** Checks a medguard server's result (or a bare receipt) with the ledger's public key. */
  verifyResult(line, ledgerKey) {
    return this.#call("verifyResult", { line, ledgerKey });
  }

  /** Stops the worker; calls in flight and later calls reject. */
  terminate() {
    this.#kill("the medguard client was terminated");
  }
}

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  throw new TypeError("file contents must be a Uint8Array or an ArrayBuffer");
}

/** The host's caps: a signature bundle, and any one file of a model directory. */
const BUNDLE_MAX_BYTES = 4 << 20;
const FILE_MAX_BYTES = 512 << 20;
const MAX_FILES = 10_000;
const TOTAL_MAX_BYTES = 2 ** 31;

/**
 * Fetches a signed model directory: its signature bundle first, then every
 * file the bundle lists. The list is only a fetch list: admission checks the
 * signature and every file's digest. Each file is capped as it arrives
 * (the bundle at 4 MiB, others at 512 MiB, as the host caps them; 2 GiB in
 * all) so that a hostile bundle or mirror cannot exhaust the tab before
 * admission refuses it. Returns a
 * Map of path to bytes.
 */
export async function fetchModelDirectory(baseUrl, { fetch: fetchFn = fetch } = {}) {
  const base = new URL(baseUrl, location.href);
  if (!base.pathname.endsWith("/")) base.pathname += "/";
  const get = async (path, cap) => {
    const url = new URL(path.split("/").map(encodeURIComponent).join("/"), base);
    if (url.origin !== base.origin) throw new Error(`${path} is not under ${base}`);
    const response = await fetchFn(url);
    if (!response.ok) throw new Error(`fetching ${url}: HTTP ${response.status}`);
    // Counted as it arrives: a missing or compressed Content-Length says
    // nothing about how much a body holds.
    const limit = Math.min(cap, TOTAL_MAX_BYTES - total);
    const reader = response.body.getReader();
    const chunks = [];
    let length = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      length += value.length;
      if (length > limit) {
        await reader.cancel();
        throw new Error(`${path} goes past the ${limit}-byte limit for a model directory`);
      }
      chunks.push(value);
    }
    total += length;
    const bytes = new Uint8Array(length);
    let at = 0;
    for (const chunk of chunks) {
      bytes.set(chunk, at);
      at += chunk.length;
    }
    return bytes;
  };
  let total = 0;
  const files = new Map();
  const bundle = await get("model.sig", BUNDLE_MAX_BYTES);
  files.set("model.sig", bundle);
  const names = [...new Set(signedFileNames(bundle))];
  if (names.length > MAX_FILES) throw new Error(`model.sig lists ${names.length} files`);
  for (const name of names) {
    if (name.split("/").some((part) => part === ".." || part === "." || part === "")) {
      throw new Error(`the signature lists an unusable path: ${JSON.stringify(name)}`);
    }
    files.set(name, await get(name, FILE_MAX_BYTES));
  }
  return files;
}

function signedFileNames(bundle) {
  try {
    const envelope = JSON.parse(new TextDecoder().decode(bundle)).dsseEnvelope;
    const payload = JSON.parse(atob(envelope.payload));
    return payload.predicate.resources.map((r) => String(r.name));
  } catch (e) {
    throw new Error(`model.sig is not a model_signing bundle: ${e.message}`);
  }
}
