// The API documentation page (/docs) rendered with the network off, in headless Chromium: the screenshot in
// docs/images/api-docs-offline.png, and a check that Swagger UI loaded from the service itself.
//
// Needs `lumbar serve` on 8000 (`make run`), Debian's /usr/bin/chromium and playwright-core:
//   npm install --prefix /tmp/pw playwright-core
//   NODE_PATH=/tmp/pw/node_modules node docs/sandbox/api-docs.mjs
// Every host but the service is unresolvable (--host-resolver-rules), as on a hospital network without
// internet access; the script exits 1 unless the page shows the operations and asked no other host.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { check, env, launch } from './browser.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = env('OUT_DIR', path.join(here, '..', 'images'));
const service = env('SERVICE_URL', 'http://127.0.0.1:8000');

const browser = await launch('api-docs', { width: 1280, height: 1000 });

try {
  const page = browser.pages()[0] || (await browser.newPage());
  const elsewhere = [];
  page.on('request', (r) => {
    const host = new URL(r.url()).hostname;
    if (!['127.0.0.1', 'localhost'].includes(host)) elsewhere.push(r.url());
  });
  await page.goto(`${service}/docs`);
  await page.locator('.swagger-ui .info .title').first().waitFor({ timeout: 20000 });
  const title = await page.locator('.swagger-ui .info .title').first().innerText();
  check(title.includes('Lumbar CDS'), `Swagger UI shows the API: ${title.split('\n')[0]}`);
  await page.locator('.opblock-summary').first().waitFor({ timeout: 10000 });
  const operations = await page.locator('.opblock-summary').count();
  check(operations >= 6, `${operations} operations listed`);
  check(await page.getByText('Authorize', { exact: false }).first().isVisible(), 'the bearer JWT scheme is offered');
  check(elsewhere.length === 0, `no request left the service (${elsewhere.join(', ') || 'none'})`);
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(out, 'api-docs-offline.png') });
} finally {
  await browser.close();
}
