// Headless Debian Chromium for the docs' screenshot scripts, with every host but this machine unresolvable
// (the network "off"), and the checks that make a script exit 1 when what it shows is wrong.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

export const env = (name, fallback) => process.env[name] || fallback;

export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok: ${message}`);
}

export async function launch(name, viewport) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), `lumbar-${name}-`));
  return chromium.launchPersistentContext(profile, {
    executablePath: env('CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1',
    ],
    viewport,
  });
}
