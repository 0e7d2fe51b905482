// The mesh kind's glTF tools (daemon/handlers/mesh/tools.py runs this): one command per process,
// `node mesh.mjs <command> '<json args>'`, one JSON object on stdout; `batch` runs several in order in
// one process (`{"steps": [{"command", "args"}, …]}` → `{"results": […]}`), so a stage pays Node's
// start-up and the codecs' WebAssembly set-up once. Modules only some commands need load on first use.
//
// Failures the caller can name are `{"error": code, "message": …}` on stdout with exit status 2;
// anything else (a crash, V8 out of memory) is a non-zero status with stderr, which the caller
// reports as the tool's failure. Nothing is fetched (setAllowNetwork(false)); the one command that
// reads files a model names, pack, gets a .gltf whose URIs the caller confined to its folder.

import { readFile } from "node:fs/promises";
import { Logger, NodeIO, getBounds } from "@gltf-transform/core";
import { ALL_EXTENSIONS, EXTTextureWebP } from "@gltf-transform/extensions";
import {
  compressTexture,
  dedup,
  dequantize,
  draco,
  flatten,
  join,
  meshopt,
  palette,
  prune,
  resample,
  simplify,
  unpartition,
  weld,
} from "@gltf-transform/functions";
import draco3d from "draco3dgltf";
import { MeshoptDecoder, MeshoptEncoder, MeshoptSimplifier } from "meshoptimizer";

const once = (load) => {
  let loaded;
  return () => (loaded ??= load());
};
const sharp = once(() => import("sharp").then((module) => module.default));
const gltfValidator = once(() => import("gltf-validator").then((module) => module.default));
const render = once(() => import("./render.mjs"));

class ToolError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// Warnings and errors only, and on stderr: stdout carries the one JSON result
const QUIET = new Logger(Logger.Verbosity.WARN);
console.info = console.debug = console.log = (...args) => process.stderr.write(args.join(" ") + "\n");

// One reader/writer per process, its Draco and meshopt codecs instantiated once
const io = once(makeIo);

async function makeIo() {
  await MeshoptDecoder.ready;
  await MeshoptEncoder.ready;
  return new NodeIO()
    .setLogger(QUIET)
    .setAllowNetwork(false)
    .registerExtensions(ALL_EXTENSIONS)
    .registerDependencies({
      "draco3d.decoder": await draco3d.createDecoderModule(),
      "draco3d.encoder": await draco3d.createEncoderModule(),
      "meshopt.decoder": MeshoptDecoder,
      "meshopt.encoder": MeshoptEncoder,
    });
}

async function readGlb(path) {
  try {
    return (await (await io()).readBinary(new Uint8Array(await readFile(path)))).setLogger(QUIET);
  } catch (error) {
    throw new ToolError("corrupt_model", `not a readable GLB: ${error.message}`);
  }
}

// The Khronos validator's verdict; external resources are refused, never fetched.
async function validate({ path, max_messages = 20 }) {
  const report = await (await gltfValidator()).validateBytes(new Uint8Array(await readFile(path)), {
    maxIssues: 1000,
    externalResourceFunction: (uri) => Promise.reject(`external resource ${uri} not allowed`),
  });
  const issues = report.issues;
  return {
    errors: issues.numErrors,
    warnings: issues.numWarnings,
    infos: issues.numInfos,
    hints: issues.numHints,
    truncated: issues.truncated,
    // the worst first: errors, then warnings, infos, hints
    messages: [...issues.messages].sort((a, b) => a.severity - b.severity).slice(0, max_messages).map((m) => ({
      code: m.code,
      severity: ["error", "warning", "info", "hint"][m.severity] ?? String(m.severity),
      pointer: m.pointer,
      message: m.message,
    })),
  };
}

function primitiveCounts(prim) {
  const position = prim.getAttribute("POSITION");
  const vertices = position ? position.getCount() : 0;
  const indices = prim.getIndices();
  const elements = indices ? indices.getCount() : vertices;
  const mode = prim.getMode();
  // 4 TRIANGLES, 5 TRIANGLE_STRIP, 6 TRIANGLE_FAN; points and lines draw no triangles
  const triangles = mode === 4 ? Math.floor(elements / 3) : mode === 5 || mode === 6 ? Math.max(0, elements - 2) : 0;
  return { vertices, triangles };
}

// What a model holds, as the manifest's `analysis` reports it (sizes from the image headers).
async function analyze({ path }) {
  const document = await readGlb(path);
  const root = document.getRoot();
  let vertices = 0;
  let triangles = 0;
  let primitives = 0;
  // Instanced meshes draw once per node: count what is drawn, as a viewer does
  for (const node of root.listNodes()) {
    const mesh = node.getMesh();
    if (!mesh) continue;
    for (const prim of mesh.listPrimitives()) {
      const counts = primitiveCounts(prim);
      vertices += counts.vertices;
      triangles += counts.triangles;
      primitives += 1;
    }
  }
  const textures = root.listTextures().map((texture) => {
    const size = texture.getSize();
    return {
      name: texture.getName() || texture.getURI() || null,
      mime_type: texture.getMimeType(),
      width: size ? size[0] : null,
      height: size ? size[1] : null,
      bytes: texture.getImage() ? texture.getImage().byteLength : 0,
    };
  });
  const scene = root.getDefaultScene() ?? root.listScenes()[0];
  const bounds = scene ? getBounds(scene) : null;
  const finite = bounds && [...bounds.min, ...bounds.max].every(Number.isFinite);
  return {
    vertices,
    triangles,
    primitives,
    meshes: root.listMeshes().length,
    nodes: root.listNodes().length,
    materials: root.listMaterials().length,
    animations: root.listAnimations().length,
    extensions_used: root.listExtensionsUsed().map((e) => e.extensionName).sort(),
    textures,
    texture_bytes: textures.reduce((sum, t) => sum + t.bytes, 0),
    bounds: finite && triangles + vertices > 0 ? { min: bounds.min, max: bounds.max } : null,
  };
}

// A .gltf and the files it names (already confined to its folder by the caller) → one GLB.
async function pack({ path, out }) {
  let document;
  try {
    document = (await (await io()).read(path)).setLogger(QUIET);
  } catch (error) {
    throw new ToolError("corrupt_model", `not a readable glTF: ${error.message}`);
  }
  await document.transform(unpartition()); // a GLB holds one buffer; a .gltf may name several
  await (await io()).write(out, document);
  return { out };
}

// Lossless clean-up, then textures to at most max_texture_size (long side), re-encoded as WebP
// unless `texture_format` is "keep". The caller has checked every texture's pixel count against its
// cap from the headers, so sharp never decodes an image it was not meant to.
// `join`: plain-colour materials merged into a palette texture, the node tree flattened and parts
// sharing a material joined, so a 400-part CAD model is a handful of draw calls (as `gltf-transform
// optimize` does; phones are bound by draw calls long before triangles). Names of parts are lost.
async function clean({ path, out, max_texture_size = 2048, texture_format = "webp", join: joinParts = false }) {
  const document = await readGlb(path);
  const parts = joinParts ? [palette({ min: 5 }), flatten(), join()] : [];
  await document.transform(dedup(), ...parts, prune(), weld(), resample());
  await compressTextures(document, { format: texture_format === "keep" ? undefined : texture_format, size: max_texture_size });
  await (await io()).write(out, document);
  return summary(document);
}

const TEXTURE_LANES = 2;

// Encoder effort on glTF Transform's 0-100 scale (WebP's method 2 of 6, PNG's 3 of 10; JPEG has
// none): measured on four 4096 px textures to 2048 px WebP, half the time of the default (method 4)
// for 1.5% more bytes at the same quality.
const TEXTURE_EFFORT = 33;

// `tasks` (functions returning promises) run at most `lanes` at a time; the first failure is thrown
// at once (the command fails and its process ends, so a lane still running is of no consequence).
async function inLanes(tasks, lanes) {
  let next = 0;
  const lane = async () => {
    while (next < tasks.length) await tasks[next++]();
  };
  await Promise.all(Array.from({ length: Math.min(lanes, tasks.length) }, lane));
}

const PALETTE = /^Palette(BaseColor|Emissive|MetallicRoughness)$/;
const RESIZABLE = new Set(["image/png", "image/jpeg", "image/webp"]);

// Textures re-encoded as `format` (undefined: as they are) and downscaled to at most `size` on their
// long side, TEXTURE_LANES at a time: WebP's encoder is single-threaded, so one lane leaves a core
// idle, while four 4096 px textures decoded at once would be 270 MB. Left alone: palette textures
// (join's colour blocks must keep their exact pixels) and resizing a texture whose short side would
// round to nothing (a 2048×4 strip at 256 px).
async function compressTextures(document, { format, size }) {
  const encoder = await sharp();
  const textures = document.getRoot().listTextures();
  const work = textures.flatMap((texture) => {
    if (PALETTE.test(texture.getName()) || !RESIZABLE.has(texture.getMimeType())) return [];
    const [width, height] = texture.getSize() ?? [0, 0];
    const scale = size ? size / Math.max(width, height, 1) : 1;
    const resize = scale < 1 && Math.min(width, height) * scale >= 1 ? [size, size] : undefined;
    if (!resize && !format) return [];
    return [() => compressTexture(texture, { encoder, targetFormat: format, resize, effort: TEXTURE_EFFORT })];
  });
  await inLanes(work, TEXTURE_LANES);
  const webp = document.createExtension(EXTTextureWebP);
  if (textures.some((texture) => texture.getMimeType() === "image/webp")) webp.setRequired(true);
  else webp.dispose();
}

// meshoptimizer's simplifier towards `triangles` (or `ratio` of the model's), unbounded by error (the
// caller measures the error it made), then what the simplification left unused pruned.
// `max_texture_size`, when given, downscales the textures with it (a coarse level needs no fine texture).
async function lod({ path, out, ratio, triangles = null, max_texture_size = null }) {
  const document = await readGlb(path);
  await MeshoptSimplifier.ready;
  if (triangles !== null) ratio = Math.min(1, triangles / Math.max(1, summary(document).triangles));
  await document.transform(weld(), simplify({ simplifier: MeshoptSimplifier, ratio, error: 1 }), prune());
  if (max_texture_size) await compressTextures(document, { format: undefined, size: max_texture_size });
  await (await io()).write(out, document);
  return summary(document);
}

// Geometry compression: Draco (level 0-10 as gltf-pipeline's compressionLevel: encode speed 10 - level)
// or meshopt (EXT_meshopt_compression, with quantization), or none.
async function compress({ path, out, method, level = 7 }) {
  const document = await readGlb(path);
  if (method === "draco") {
    await document.transform(draco({ method: "edgebreaker", encodeSpeed: 10 - level, decodeSpeed: 10 - level }));
  } else if (method === "meshopt") {
    await document.transform(meshopt({ encoder: MeshoptEncoder, level: "high" }));
  } else if (method === "none") {
    // a compressed input stays compressed on write while its extension is in use: drop it, and
    // undo quantization (KHR_mesh_quantization's integer positions) so every reader gets floats
    for (const extension of document.getRoot().listExtensionsUsed()) {
      if (COMPRESSION_EXTENSIONS.has(extension.extensionName)) extension.dispose();
    }
    await document.transform(dequantize());
  } else {
    throw new ToolError("invalid_params", `unknown compression ${method}`);
  }
  await (await io()).write(out, document);
  // Counted in the file as written: Draco's encoder drops degenerate triangles, so the document in
  // memory would overstate what a viewer draws.
  return summary(await readGlb(out));
}

const COMPRESSION_EXTENSIONS = new Set(["KHR_draco_mesh_compression", "EXT_meshopt_compression"]);

function summary(document) {
  let triangles = 0;
  let vertices = 0;
  for (const node of document.getRoot().listNodes()) {
    for (const prim of node.getMesh()?.listPrimitives() ?? []) {
      const counts = primitiveCounts(prim);
      triangles += counts.triangles;
      vertices += counts.vertices;
    }
  }
  return { triangles, vertices };
}

// The model drawn from a 3/4 view (render.mjs); a model the page could not draw is the tool's verdict.
async function thumbnail(args) {
  const outcome = await (await render()).renderThumbnail(args);
  if (!outcome.ok) throw new ToolError("render_failed", `the thumbnail could not be drawn: ${outcome.error}`);
  return outcome;
}

// Several commands in order in this one process; the first failure ends the batch as its own would.
async function batch({ steps }) {
  const results = [];
  for (const { command, args } of steps) {
    if (command === "batch" || !COMMANDS[command]) throw new ToolError("invalid_params", `no command ${command}`);
    results.push(await COMMANDS[command](args));
  }
  return { results };
}

const COMMANDS = { validate, analyze, pack, clean, lod, compress, thumbnail, batch };

async function main() {
  const [command, args] = process.argv.slice(2);
  const run = COMMANDS[command];
  if (!run) {
    process.stderr.write(`unknown command ${command}: use one of ${Object.keys(COMMANDS).join(", ")}\n`);
    process.exit(64);
  }
  try {
    const result = await run(JSON.parse(args ?? "{}"));
    process.stdout.write(JSON.stringify(result) + "\n");
  } catch (error) {
    if (error instanceof ToolError) {
      process.stdout.write(JSON.stringify({ error: error.code, message: error.message }) + "\n");
      process.exit(2);
    }
    throw error;
  }
}

await main();
