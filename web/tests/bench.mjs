// The page's per-image time in the system Chromium: the demo's own client
// (worker, wasm module, postMessage both ways), screen and classify of one
// image, as a page pays it. Run by web/benches/browser.rs.
//
// Usage: node bench.mjs SITE_DIR IMAGE_PATH_IN_MODEL_DIR ROUNDS
// Prints {"page_ms": [...per call...], "load_to_ready_ms": n,
// "load_to_first_verdict_ms": n}: the first from the navigation's start to
// the demo's ready state, the second to the first verdict after it (the
// page's own clock, whose origin is the navigation's start).
import { readFile } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";
import { serve } from "../tools/serve.mjs";

const [site, image, rounds = "100"] = process.argv.slice(2);
const server = await serve(site);
const origin = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  const started = Date.now();
  await page.goto(`${origin}/`);
  await page.waitForSelector("body[data-ready='true']", { timeout: 120_000 });
  const loadToReady = Date.now() - started;
  const sample = await readFile(path.join(site, "models/pneumonia", image));
  const firstVerdict = await page.evaluate(async (bytes) => {
    await window.medguard.classify("first", new Uint8Array(bytes));
    return performance.now();
  }, [...sample]);
  const times = await page.evaluate(
    async ([image, rounds]) => {
      const { Medguard, fetchModelDirectory } = await import("./package/medguard.js");
      const medguard = await Medguard.start();
      const files = await fetchModelDirectory("models/pneumonia/");
      const policy = await (await fetch("models/trust/demo-policy.toml")).text();
      const pem = await (await fetch("models/trust/demo.pub.pem")).text();
      await medguard.admit(policy, { "demo.pub.pem": pem }, files);
      const bytes = files.get(image);
      const out = [];
      for (let i = 0; i < rounds + 10; i++) {
        const t = performance.now();
        await medguard.classify(null, bytes, i);
        if (i >= 10) out.push(performance.now() - t);
      }
      medguard.terminate();
      return out;
    },
    [image, Number(rounds)],
  );
  console.log(
    JSON.stringify({
      page_ms: times,
      load_to_ready_ms: loadToReady,
      load_to_first_verdict_ms: firstVerdict,
    }),
  );
} finally {
  await browser.close();
  server.close();
}
