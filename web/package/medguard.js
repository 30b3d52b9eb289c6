// medguard in the browser: the page-side client. Every call is answered by a
// Web Worker (worker.js) that holds the wasm module, so the page never freezes;
// no call sends anything anywhere.

/** Starts a worker and its wasm module. */
export class Medguard {
  #worker = null;
  #next = 1;
  #pending = new Map();
  #options;
  #admitted = null;
  /** SHA-256 of the wasm module the worker runs. */
  moduleSha256 = "";

  constructor(options = {}) {
    this.#options = options;
  }

  /** A ready client: the worker started and its wasm module instantiated. */
  static async start(options = {}) {
    const client = new Medguard(options);
    await client.#spawn();
    return client;
  }

  async #spawn() {
    const url = this.#options.workerUrl ?? new URL("./worker.js", import.meta.url);
    this.#worker = new Worker(url, { type: "module" });
    this.#worker.onmessage = (event) => this.#settle(event.data);
    this.#worker.onerror = (event) => {
      event.preventDefault?.();
      this.#failAll(new Error(`the medguard worker stopped: ${event.message ?? "unknown error"}`));
    };
    const { moduleSha256 } = await this.#call("init", { wasmUrl: this.#options.wasmUrl });
    this.moduleSha256 = moduleSha256;
  }

  #call(op, args, transfer = []) {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ id, op, args }, transfer);
    });
  }

  #settle({ id, ok, value, error, fatal }) {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    if (ok) {
      pending.resolve(value);
      return;
    }
    if (fatal) {
      // The instance trapped: its memory is not to be trusted. A fresh
      // worker, with the same model admitted again, serves what follows.
      this.#worker.terminate();
      this.#failAll(new Error("the medguard worker was restarted"));
      this.#restart = this.#spawn().then(() =>
        this.#admitted ? this.#call("admit", this.#admitted) : undefined,
      );
      pending.reject(
        new Error(`the inference core stopped on this input (wasm trap: ${error}) and was restarted`),
      );
      return;
    }
    pending.reject(new Error(error));
  }

  #restart = Promise.resolve();

  #failAll(error) {
    for (const { reject } of this.#pending.values()) reject(error);
    this.#pending.clear();
  }

  async #ready() {
    await this.#restart;
  }

  /**
   * Verifies and loads a model directory under a trust policy.
   * `files` maps relative paths to bytes (see `fetchModelDirectory`);
   * `keyFiles` maps the policy's `public_key_file` names to PEM text.
   * Rejects with the refusal's reason.
   */
  async admit(policy, keyFiles, files) {
    await this.#ready();
    const args = { policy, keyFiles, files: [...files.entries()] };
    const attestation = await this.#call("admit", args);
    this.#admitted = args;
    return attestation;
  }

  /** Screens and classifies every image in a PNG, `.npy` or DICOM file. */
  async classify(name, bytes, seed) {
    await this.#ready();
    return this.#call("classify", { name, bytes: toBytes(bytes), seed });
  }

  /** The first image in a file and its median-squeezed copy. */
  async squeezed(bytes) {
    await this.#ready();
    return this.#call("squeezed", { bytes: toBytes(bytes) });
  }

  /** Checks a medguard server's result (or a bare receipt) with the ledger's public key. */
  async verifyResult(line, ledgerKey) {
    await this.#ready();
    return this.#call("verifyResult", { line, ledgerKey });
  }

  /** Stops the worker. */
  terminate() {
    this.#worker?.terminate();
    this.#failAll(new Error("the medguard client was terminated"));
  }
}

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  throw new TypeError("file contents must be a Uint8Array or an ArrayBuffer");
}

/**
 * Fetches a signed model directory: its signature bundle first, then every
 * file the bundle lists. The list is only a fetch list: admission checks the
 * signature and every file's digest. Returns a Map of path to bytes.
 */
export async function fetchModelDirectory(baseUrl, { fetch: fetchFn = fetch } = {}) {
  const base = new URL(baseUrl, location.href);
  if (!base.pathname.endsWith("/")) base.pathname += "/";
  const get = async (path) => {
    const url = new URL(path.split("/").map(encodeURIComponent).join("/"), base);
    const response = await fetchFn(url);
    if (!response.ok) throw new Error(`fetching ${url}: HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  };
  const files = new Map();
  const bundle = await get("model.sig");
  files.set("model.sig", bundle);
  for (const name of signedFileNames(bundle)) {
    if (name.split("/").some((part) => part === ".." || part === "." || part === "")) {
      throw new Error(`the signature lists an unusable path: ${JSON.stringify(name)}`);
    }
    files.set(name, await get(name));
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
