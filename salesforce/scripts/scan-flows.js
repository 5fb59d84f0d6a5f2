// Lightning Flow Scanner over every Flow given (files or folders): prints each finding and
// exits 1 if any has severity "error", so CI fails on it. Notes and warnings are printed only.
"use strict";
const fs = require("fs");
const path = require("path");
const { parse, scan } = require("@flow-scanner/lightning-flow-scanner-core");

function flowFiles(target) {
  if (fs.statSync(target).isDirectory()) {
    return fs.readdirSync(target).flatMap((name) => flowFiles(path.join(target, name)));
  }
  return target.endsWith(".flow-meta.xml") ? [path.resolve(target)] : [];
}

async function main(targets) {
  const files = targets.flatMap(flowFiles);
  if (files.length === 0) {
    console.error("scan-flows: no .flow-meta.xml files found");
    return 1;
  }
  const results = scan(await parse(files));
  let errors = 0;
  for (const result of results) {
    for (const rule of result.ruleResults.filter((r) => r.occurs)) {
      const severity = rule.severity || "error";
      if (severity === "error") errors += 1;
      const where = rule.details.map((d) => d.name).join(", ");
      console.log(`${severity}: ${result.flow.name}: ${rule.ruleName}: ${where}`);
    }
  }
  console.log(`scan-flows: ${files.length} flows, ${errors} errors`);
  return errors ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(2);
  },
);
