// End-to-end test of the demo page in the system Chromium (Playwright
// drives it; nothing downloads a browser). Run by web/tests/browser.rs,
// which compares what this prints with `medguard predict --json`.
//
// Usage: node e2e.mjs SITE_DIR OUT_DIR FILE... [--verify RESULT_FILE KEY_FILE]
//        [--trap TRAP_FILE AFTER_FILE]
// Prints one JSON object: each file's predictions (or error), the tamper
// and receipt outcomes, every request made after the model loaded, timings;
// last, the file that traps the module and one after it, with the requests
// the worker's restart made.
import { readFile } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";
import { serve } from "../tools/serve.mjs";

const args = process.argv.slice(2);
const verifyAt = args.indexOf("--verify");
const verify = verifyAt >= 0 ? args.splice(verifyAt, 3).slice(1) : null;
const trapAt = args.indexOf("--trap");
const trap = trapAt >= 0 ? args.splice(trapAt, 3).slice(1) : null;
const [site, out, ...files] = args;
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";

const server = await serve(site);
const origin = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const console_ = [];
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  let phase = "loading";
  const requests = { loading: [], ready: [], restart: [] };
  // Every request of the page and its worker, to any origin.
  page.context().on("request", (r) => requests[phase].push(`${r.method()} ${r.url()}`));

  const started = Date.now();
  await page.goto(`${origin}/`);
  await page.waitForSelector("body[data-ready]", { timeout: 120_000 });
  if ((await page.getAttribute("body", "data-ready")) !== "true") {
    throw new Error(`the page did not get ready: ${await page.textContent("#status")}\n${console_.join("\n")}`);
  }
  const loadedMs = Date.now() - started;
  phase = "ready";

  // Every file at once, as a user picks them.
  const picked = Date.now();
  await page.setInputFiles("#files", files);
  await page.waitForFunction(
    (n) => document.querySelectorAll(".result[data-result], .result[data-error]").length === n,
    files.length,
    { timeout: 300_000 },
  );
  const allMs = Date.now() - picked;
  const results = await page.$$eval(".result", (rows) =>
    rows.map((r) => ({
      input: r.dataset.input,
      predictions: r.dataset.result ? JSON.parse(r.dataset.result) : null,
      error: r.dataset.error ?? null,
      ms: r.dataset.ms ? Number(r.dataset.ms) : null,
    })),
  );

  // The bundled samples, from the signed directory already in memory.
  await page.click("#samples");
  await page.waitForFunction(
    (n) => document.querySelectorAll(".result[data-result], .result[data-error]").length === n,
    files.length + 8,
    { timeout: 300_000 },
  );

  await page.click("#tamper");
  await page.waitForFunction(() => document.querySelector("#tamper-result").textContent !== "");
  const tamper = await page.textContent("#tamper-result");

  let verified = null;
  if (verify) {
    const [resultFile, keyFile] = verify;
    const outcome = async (line) => {
      await page.fill("#result-line", line);
      await page.fill("#ledger-key", (await readFile(keyFile, "utf8")).trim());
      await page.evaluate(() => (document.querySelector("#verify-result").textContent = ""));
      await page.click("#verify");
      await page.waitForFunction(() => document.querySelector("#verify-result").textContent !== "");
      return page.textContent("#verify-result");
    };
    const line = (await readFile(resultFile, "utf8")).trim();
    const edited = JSON.parse(line);
    edited.label = edited.label === "normal" ? "pneumonia" : "normal";
    verified = { genuine: await outcome(line), edited: await outcome(JSON.stringify(edited)) };
  }

  const rows = () => document.querySelectorAll(".result[data-result], .result[data-error]").length;
  let trapped = null;
  if (trap) {
    phase = "restart";
    const before = await page.evaluate(rows);
    await page.setInputFiles("#files", trap);
    await page.waitForFunction((n) => document.querySelectorAll(".result[data-result], .result[data-error]").length === n, before + 2, {
      timeout: 300_000,
    });
    trapped = await page.$$eval(".result", (all) =>
      all.slice(-2).map((r) => ({
        input: r.dataset.input,
        predictions: r.dataset.result ? JSON.parse(r.dataset.result) : null,
        error: r.dataset.error ?? null,
      })),
    );
    // Three calls in flight at once, the trap in the middle: only it fails.
    const [trapBytes, goodBytes] = await Promise.all(trap.map((f) => readFile(f)));
    trapped.push(
      await page.evaluate(
        async ([t, g]) => {
          const [trapFile, good] = [new Uint8Array(t), new Uint8Array(g)];
          const settled = await Promise.allSettled([
            window.medguard.classify("before", good, 1),
            window.medguard.classify("trap", trapFile, 2),
            window.medguard.classify("after", good, 3),
          ]);
          return settled.map((r) =>
            r.status === "fulfilled" ? r.value[0].label : `error: ${r.reason.message}`,
          );
        },
        [[...trapBytes], [...goodBytes]],
      ),
    );
  }

  await page.screenshot({ path: path.join(out, "demo.png"), fullPage: true });
  console.log(
    JSON.stringify({
      results,
      tamper,
      verified,
      requests_before_ready: requests.loading,
      requests_after_ready: requests.ready,
      trapped,
      requests_during_restart: requests.restart,
      timings_ms: { load_to_ready: loadedMs, files: allMs, per_file: allMs / files.length },
      console: console_,
    }),
  );
} finally {
  await browser.close();
  server.close();
}
