// Screenshots for docs/sandbox.md: a new user's walk through the CDS Hooks sandbox, in headless Chromium.
//
// Needs the three servers of docs/sandbox.md running (Lumbar CDS on 8000 with the sandbox trusted, the demo
// FHIR server on 8090, a local build of the sandbox on 8080), Debian's /usr/bin/chromium and playwright-core:
//   npm install --prefix /tmp/pw playwright-core
//   NODE_PATH=/tmp/pw/node_modules node docs/sandbox/screenshots.mjs
// Every check below must hold or the script exits 1: a red-flag patient shows its critical card with
// suggestions, accepting one sends feedback that the service answers with 200, and the PAMA screen shows a
// rating. The internet is unreachable on purpose (--host-resolver-rules); request interception is not used,
// because Playwright would then answer CORS preflights itself and hide a service that does not.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { check, env, launch } from './browser.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = env('OUT_DIR', path.join(here, '..', 'images'));
const sandbox = env('SANDBOX_URL', 'http://127.0.0.1:8080/');
const fhir = env('FHIR_URL', 'http://127.0.0.1:8090/fhir');
const discovery = env('DISCOVERY_URL', 'http://127.0.0.1:8000/cds-services');

const open = (patientId, extra = {}) =>
  `${sandbox}?${new URLSearchParams({ fhirServiceUrl: fhir, patientId, serviceDiscoveryURL: discovery, ...extra })}`;

const browser = await launch('sandbox', { width: 1280, height: 900 });

try {
  const page = browser.pages()[0] || (await browser.newPage());
  const feedback = [];
  page.on('response', (r) => {
    if (r.url().endsWith('/feedback') && r.request().method() === 'POST') feedback.push(r.status());
  });
  page.on('pageerror', (e) => console.log(`[page error] ${e.message}`));

  // Step 4: the patient view of a red-flag patient.
  await page.goto(open('demo-cauda-equina', { screen: 'patient-view', hook: 'patient-view' }));
  const summary = page.getByText('Suspected cauda equina syndrome', { exact: false }).first();
  await summary.waitFor({ timeout: 20000 });
  const suggestion = page.getByRole('button', { name: /emergency/i }).first();
  check(await suggestion.isVisible(), 'demo-cauda-equina shows its critical card with suggestions');
  await page.waitForTimeout(500);
  await page.screenshot({ path: path.join(out, 'sandbox-1-patient-view.png') });

  await suggestion.click();
  for (let i = 0; i < 50 && feedback.length === 0; i++) await page.waitForTimeout(100);
  check(feedback[0] === 200, `accepting a suggestion sends feedback, answered ${feedback[0]}`);
  // The rest of the card: its guideline links and the override reasons offered when dismissing it.
  const arrow = page.getByRole('button', { name: 'select dismiss reason' }).first();
  await arrow.scrollIntoViewIfNeeded();
  await arrow.click();
  const reasons = page.getByRole('menuitem', { name: /Override/ });
  await reasons.first().waitFor({ timeout: 5000 });
  check((await reasons.count()) >= 3, 'the critical card offers its override reasons');
  await page.waitForTimeout(500);
  await page.screenshot({ path: path.join(out, 'sandbox-2-card-actions.png') });
  await page.keyboard.press('Escape');

  // Step 5: the PAMA screen, MRI lumbar spine without contrast for low back pain.
  await page.goto(open('demo-acute-lbp', { screen: 'pama', hook: 'order-select' }));
  await page.getByText('PAMA Rating:', { exact: false }).first().waitFor({ timeout: 20000 });
  const pick = async (placeholder, query) => {
    const input = page.locator('div[class*="-container"]').filter({ hasText: placeholder }).locator('input');
    await input.focus();
    await page.keyboard.type(query, { delay: 30 });
    await page.waitForTimeout(800);
    await page.keyboard.press('Enter');
    await page.waitForTimeout(1200);
  };
  await pick('Search orders', '72148');
  await pick('Search reasons', '279039007');
  const rating = page.getByText('PAMA Rating: not-appropriate', { exact: false }).first();
  await rating.waitFor({ timeout: 20000 });
  check(await page.getByText('No red flags documented', { exact: false }).first().isVisible(),
    'the PAMA screen shows the rating not-appropriate and the imaging-order warning for demo-acute-lbp');
  await page.waitForTimeout(500);
  await page.screenshot({ path: path.join(out, 'sandbox-3-pama.png') });
} catch (error) {
  console.error(error.message);
  process.exitCode = 1;
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
