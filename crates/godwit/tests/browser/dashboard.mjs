// The dashboard in a real headless Chromium (Debian's), driven by playwright-core. Run by
// crates/godwit/tests/browser.rs, which starts the S3 servers and `godwit serve` and passes where
// they are in the environment. Each check is printed; the first that fails ends the run (exit 1).
//
// It logs in, starts a migration from the form and watches it reach 100% without a reload; opens
// a migration with a planted failure, reads the error in the fail queue and presses retry; pauses
// and resumes a running migration. Screenshots go to $SCREENSHOTS.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through cargo test --test browser`);
  return value;
};
const url = env("GODWIT_URL");
const token = env("GODWIT_TOKEN");
const shots = env("SCREENSHOTS");
const checks = [];

function check(what, ok, detail = "") {
  checks.push({ what, ok });
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${detail ? ": " + detail : ""}`);
  if (!ok) throw new Error(`check failed: ${what} ${detail}`);
}

// Migrations the browser does not start itself, created through the API (with the token).
async function create(body) {
  const response = await fetch(url + "/api/migrations", {
    method: "POST",
    headers: { "Authorization": `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json();
  if (response.status !== 201) throw new Error(`creating ${body.name}: ${response.status} ${JSON.stringify(data)}`);
  return data.id;
}

// Asks the test to make the planted failure's object readable, and waits until it has.
async function healed() {
  console.log("HEAL");
  for (let next = await lines.next(); !next.done; next = await lines.next()) {
    if (next.value.trim() === "healed") return;
  }
  throw new Error("the test never said the object is readable");
}
const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

const text = async (page, selector) => ((await page.textContent(selector)) || "").trim();
const number = (s) => Number(String(s).replace(/[^0-9.]/g, ""));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));

  // 1. Logging in: a page sends the browser to the login form; the token opens the dashboard.
  await page.goto(url + "/");
  check("an anonymous visit is sent to the login page", page.url().includes("/login"), page.url());
  await page.fill("#token", "not-the-token-at-all");
  await page.click("#login");
  check("a wrong token is refused", (await page.content()).includes("not this server"));
  await page.fill("#token", token);
  await page.click("#login");
  await page.waitForURL(url + "/");
  check("the right token opens the migrations list", (await page.title()).startsWith("Migrations"));

  const failing = await create({
    name: "planted failure",
    source: `s3://${env("FAIL_BUCKET")}`,
    source_endpoint: env("SOURCE_ENDPOINT"),
    dest: `s3://${env("DEST_BUCKET")}/planted`,
    dest_endpoint: env("DEST_ENDPOINT"),
    max_attempts: 1,
  });
  const slow = await create({
    name: "long haul",
    source: env("SLOW_SOURCE"),
    dest: `s3://${env("DEST_BUCKET")}/long-haul`,
    dest_endpoint: env("DEST_ENDPOINT"),
    partition_by: "prefix:1",
    concurrency: 1,
  });

  // 2. A migration started from the form, watched to 100% live.
  await page.click("text=New migration");
  await page.fill("input[name=source]", env("FORM_SOURCE"));
  await page.fill("input[name=dest]", `s3://${env("DEST_BUCKET")}/from-the-form`);
  await page.fill("input[name=dest_endpoint]", env("DEST_ENDPOINT"));
  await page.fill("input[name=name]", "from the form");
  await page.fill("input[name=partition_by]", "prefix:1");
  await page.fill("input[name=concurrency]", "2");
  await page.click("#start");
  await page.waitForURL(/\/migrations\/\d+$/);
  const formPage = page.url();
  let navigations = 0;
  page.on("framenavigated", (frame) => { if (frame === page.mainFrame()) navigations++; });
  const first = await text(page, "#percent");
  check("the form opens the new migration's page", (await text(page, "#name")) === "from the form", first);
  await page.waitForSelector("#live-state:has-text('live')");
  let seen = new Set([first]);
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline) {
    const percent = await text(page, "#percent");
    seen.add(percent);
    if (percent === "100.0%") break;
    await page.waitForTimeout(150);
  }
  check("the progress reaches 100% without a reload", (await text(page, "#percent")) === "100.0%" && navigations === 0,
    `values seen: ${[...seen].join(", ")}; reloads: ${navigations}`);
  check("it went through values between 0% and 100% on the way", [...seen].some((p) => number(p) > 0 && number(p) < 100),
    [...seen].join(", "));
  await page.waitForSelector("#summary .badge[data-status=finished]");
  check("its objects count is 40 of 40", (await text(page, "#objects")) === "40", await text(page, "#summary"));
  await page.screenshot({ path: `${shots}/migration-finished.png`, fullPage: true });
  await page.click("text=Browse objects");
  await page.fill("input[name=prefix]", "part-1/");
  await page.selectOption("select[name=state]", "copied");
  await page.click("text=Show");
  await page.waitForURL(/objects\?prefix=part-1/);
  const rows = await page.locator("table.objects tbody tr").count();
  check("browsing objects by prefix and state lists the partition's 10", rows === 10, String(rows));
  await page.screenshot({ path: `${shots}/objects.png`, fullPage: true });

  // 3. The planted failure: its error in the fail queue, and the retry button.
  await page.goto(`${url}/migrations/${failing}`);
  await page.waitForSelector("#failures td.key:has-text('p2/d.bad')", { timeout: 60_000 });
  const row = page.locator("#failures tbody tr", { hasText: "p2/d.bad" });
  const error = await row.locator("td.error").textContent();
  check("the fail queue shows the failed object's error", /denied|refuses|403/i.test(error), error);
  check("and its class", (await row.textContent()).includes("access_denied"));
  check("and one attempt", (await row.locator("td.num").textContent()).trim() === "1");
  await page.screenshot({ path: `${shots}/migration-failed.png`, fullPage: true });
  // The test makes the object readable (as fixing its permissions would), then retries it.
  await healed();
  await page.click("#retry");
  await page.waitForSelector("#toast .notice.ok:has-text('back in the queue')");
  check("retry puts the object back in the queue", (await text(page, "#toast")).includes("back in the queue"),
    await text(page, "#toast"));
  await page.waitForFunction(() => document.querySelector("#percent").textContent.trim() === "100.0%"
    && document.querySelector("#failed-count").textContent.trim().startsWith("0 "), null, { timeout: 60_000 });
  check("the workers copy it: nothing failed, 100%", (await text(page, "#failures")).includes("Nothing failed"));

  // 4. Pause and resume a running migration.
  await page.goto(`${url}/migrations/${slow}`);
  await page.waitForFunction(() => {
    const p = Number(document.querySelector("#percent").textContent.replace(/[^0-9.]/g, ""));
    return p >= 15 && p < 100;
  }, null, { timeout: 60_000 });
  await page.waitForTimeout(6000);
  await page.screenshot({ path: `${shots}/migration-running.png`, fullPage: true });
  await page.click("#pause");
  await page.waitForSelector("#summary .badge[data-status=paused]");
  check("pause shows the migration paused",
    (await page.locator("#summary .badge[data-status=paused]").count()) === 1);
  await page.waitForTimeout(2500);
  const paused = number(await text(page, "#objects"));
  await page.waitForTimeout(4000);
  const later = number(await text(page, "#objects"));
  check("nothing more is copied while it is paused", later === paused, `${paused} then ${later}`);
  check("the paused migration is not finished", number(await text(page, "#percent")) < 100);
  await page.screenshot({ path: `${shots}/migration-paused.png`, fullPage: true });
  await page.click("#resume");
  await page.waitForSelector("#summary .badge[data-status=copying], #summary .badge[data-status=finished]");
  check("resume sets it running again",
    (await page.locator("#summary .badge[data-status=paused]").count()) === 0);
  await page.waitForFunction(() => document.querySelector("#percent").textContent.trim() === "100.0%",
    null, { timeout: 120_000 });
  check("the resumed migration reaches 100%", number(await text(page, "#objects")) > later);
  await page.screenshot({ path: `${shots}/migration-resumed-finished.png`, fullPage: true });

  await page.goto(url + "/");
  await page.waitForSelector("#list table");
  check("the list shows the three migrations", (await page.locator("#list tbody tr").count()) === 3);
  await page.screenshot({ path: `${shots}/migrations.png`, fullPage: true });
  check("no script error on any page", errors.length === 0, errors.join("; "));
  void formPage;
} finally {
  await browser.close();
  input.close();
}
console.log(JSON.stringify({ checks: checks.length, passed: checks.filter((c) => c.ok).length }));
