"""The classifier's pages in a real browser (Debian's chromium, driven by Playwright):
`/` classifies a photo dropped in by a person, `/docs` lists the API's operations, and
neither page makes a request beyond the service nor breaks its Content-Security-Policy.

    browser.py BASE_URL PHOTO SCREENSHOT_DIR

Writes the screenshots into SCREENSHOT_DIR and names them on stdout."""

import os
import sys
import time
from urllib.parse import urlsplit

from playwright.sync_api import expect, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def main(base, photo, out_dir):
    host = urlsplit(base).netloc
    requests, problems = [], []
    started = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 760})
        page.on("request", lambda r: requests.append(r.url))
        # CSP violations and script errors show up on the console.
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}"))

        # The page: a person chooses a photo and sees the classes.
        page.goto(base + "/")
        expect(page.get_by_role("heading", name="Image classifier")).to_be_visible()
        expect(page.locator("#model")).to_contain_text("efficientnet-lite0")
        page.set_input_files("#file", photo)
        expect(page.locator("#result")).to_be_visible(timeout=120_000)
        labels = page.locator("#predictions .label").all_inner_texts()
        assert len(labels) == 5, labels
        assert any(c in labels[0] for c in ("tabby", "tiger cat", "Egyptian cat")), labels
        expect(page.locator("#meta")).to_contain_text("Inference took")
        page_shot = os.path.join(out_dir, "classifier-page.png")
        page.screenshot(path=page_shot, full_page=True)

        # Swagger UI, from the service itself, lists every operation.
        page.goto(base + "/docs")
        for op in ("/predict", "/history", "/health"):
            expect(page.locator(".opblock-summary-path", has_text=op).first).to_be_visible(
                timeout=60_000)
        docs_shot = os.path.join(out_dir, "classifier-docs.png")
        page.screenshot(path=docs_shot, full_page=True)
        browser.close()

    foreign = [u for u in requests
               if urlsplit(u).scheme not in ("blob", "data") and urlsplit(u).netloc != host]
    assert not foreign, f"requests that left the service: {foreign}"
    assert not problems, f"console errors (a CSP violation?): {problems}"
    print(f"browser test: top class {labels[0]!r}; {len(requests)} requests, all to {host}; "
          f"{time.monotonic() - started:.1f}s")
    print(f"screenshot: {page_shot}")
    print(f"screenshot: {docs_shot}")


if __name__ == "__main__":
    main(*sys.argv[1:])
