// The demo page: admits the bundled model, then screens and classifies the
// images the user picks, all in the medguard worker. After the model
// directory loaded, nothing here fetches anything.
import { Medguard, fetchModelDirectory } from "./package/medguard.js";

const MODEL_DIR = "models/pneumonia/";
const POLICY = "models/trust/demo-policy.toml";
const KEY_FILE = "demo.pub.pem";

const $ = (id) => document.getElementById(id);
let medguard;
let files;
let policy;
let keyFiles;

async function fetchText(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`fetching ${url}: HTTP ${response.status}`);
  return response.text();
}

function status(text, state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

async function main() {
  medguard = await Medguard.start();
  status("Fetching the signed model…", "loading");
  [policy, files] = await Promise.all([fetchText(POLICY), fetchModelDirectory(MODEL_DIR)]);
  keyFiles = { [KEY_FILE]: await fetchText(`models/trust/${KEY_FILE}`) };
  const a = await medguard.admit(policy, keyFiles, files);
  $("model-name").textContent = `${a.name} ${a.version}`;
  $("signer").textContent = a.signer;
  $("fingerprint").textContent = a.key_fingerprint;
  $("model-digest").textContent = a.model_sha256;
  $("expires").textContent = a.expires ?? "never";
  $("screening").textContent = a.statistics.join(", ");
  $("module-digest").textContent = medguard.moduleSha256;
  $("attested").hidden = false;
  status(`Verified: ${a.name} ${a.version}, signed by ${a.signer}. Ready.`, "ready");
  for (const id of ["tamper", "samples", "verify"]) $(id).disabled = false;
  // The client, for the browser's console (and the end-to-end test).
  window.medguard = medguard;
  document.body.dataset.ready = "true";
}

async function tryTampered() {
  const tampered = new Map(files);
  const model = new Uint8Array(files.get("model.onnx"));
  model[Math.floor(model.length / 2)] ^= 0x10;
  tampered.set("model.onnx", model);
  try {
    await medguard.admit(policy, keyFiles, tampered);
    $("tamper-result").textContent = "admitted (this must never happen)";
    $("tamper-result").className = "error";
  } catch (e) {
    $("tamper-result").textContent = `Refused: ${e.message}`;
    $("tamper-result").className = "refused";
  } finally {
    // The untouched model serves again.
    await medguard.admit(policy, keyFiles, files);
  }
}

function draw(canvas, values, width, height) {
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  values.forEach((v, i) => {
    const g = Math.max(0, Math.min(255, Math.round(v * 255)));
    image.data.set([g, g, g, 255], i * 4);
  });
  ctx.putImageData(image, 0, 0);
}

function figure(caption, values, width, height) {
  const f = document.createElement("figure");
  const c = document.createElement("canvas");
  draw(c, values, width, height);
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  f.append(c, cap);
  return f;
}

async function run(name, bytes) {
  const row = document.createElement("div");
  row.className = "result";
  row.dataset.input = name;
  $("results").append(row);
  try {
    const started = performance.now();
    const predictions = await medguard.classify(name, bytes);
    row.dataset.ms = (performance.now() - started).toFixed(2);
    const sq = await medguard.squeezed(bytes);
    // Differences are small: scaled so that the largest is white.
    const diff = sq.image.map((v, i) => Math.abs(v - sq.squeezed[i]));
    const max = Math.max(...diff, 1e-6);
    row.append(
      figure("image", sq.image, sq.width, sq.height),
      figure(`${sq.window}x${sq.window} median`, sq.squeezed, sq.width, sq.height),
      figure(`difference (x${(1 / max).toFixed(0)})`, diff.map((d) => d / max), sq.width, sq.height),
      details(predictions),
    );
    row.dataset.result = JSON.stringify(predictions);
  } catch (e) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = `${name}: ${e.message}`;
    row.append(p);
    row.dataset.error = e.message;
  }
}

function details(predictions) {
  const div = document.createElement("div");
  for (const p of predictions) {
    const head = document.createElement("p");
    const badge = document.createElement("span");
    badge.className = `verdict ${p.verdict}`;
    badge.textContent = p.verdict;
    head.append(`${p.input ?? "image"} `, badge, ` p = ${p.p_value?.toFixed(4) ?? "n/a"}`);
    div.append(head);
    const label = document.createElement("p");
    label.textContent = p.label
      ? `Label: ${p.label}`
      : "No label: the input was rejected, so medguard withholds its prediction.";
    div.append(label);
    if (p.probabilities) {
      const table = document.createElement("table");
      table.className = "probabilities";
      for (const [k, v] of Object.entries(p.probabilities)) {
        const tr = table.insertRow();
        tr.insertCell().textContent = k;
        tr.insertCell().textContent = v.toFixed(4);
      }
      div.append(table);
    }
    const ev = document.createElement("p");
    ev.className = "evidence";
    ev.textContent = Object.entries(p.statistics)
      .map(([k, s]) => `${k}: ${s.value.toFixed(4)} (p ${s.p_value.toFixed(4)})`)
      .join("; ");
    div.append(ev);
  }
  return div;
}

async function runFiles(list) {
  for (const file of list) {
    await run(file.name, new Uint8Array(await file.arrayBuffer()));
  }
}

async function runSamples() {
  // Part of the signed directory, already in memory: nothing is fetched.
  const names = [...files.keys()].filter((n) => /^(samples|adversarial)\/.*\.png$/.test(n));
  for (const name of names) await run(name, files.get(name));
}

async function verify() {
  const out = $("verify-result");
  try {
    const v = await medguard.verifyResult($("result-line").value, $("ledger-key").value);
    const unverified = v.unsigned.length
      ? ` Not covered by the receipt: ${v.unsigned.join(", ")}.`
      : "";
    out.textContent = `Valid: entry ${v.index} (${v.kind}) is in ${v.origin} at size ${v.tree_size}, root ${v.root}. ${v.description}${unverified}`;
    out.className = "valid";
  } catch (e) {
    out.textContent = `Refused: ${e.message}`;
    out.className = "refused";
  }
}

$("files").addEventListener("change", (e) => runFiles(e.target.files));
$("samples").addEventListener("click", runSamples);
$("tamper").addEventListener("click", tryTampered);
$("verify").addEventListener("click", verify);
const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  runFiles(e.dataTransfer.files);
});

main().catch((e) => {
  status(e.message, "error");
  document.body.dataset.ready = "error";
});
