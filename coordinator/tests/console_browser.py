"""Drives the coordinator's web console in headless Chromium (Debian's `chromium` and
`chromium-driver`, through Python's selenium): signs in with the owner token, creates a task
from TOML, starts it against the loopback devices the Rust side runs, watches rounds complete
(live, without reloading), verifies the round log, pauses, resumes and stops it, and takes
screenshots at desktop and phone width. Prints a JSON summary on its last line.

Usage: python3 console_browser.py BASE_URL TOKEN TASK_TOML_FILE SCREENSHOT_DIR
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def driver():
    options = webdriver.ChromeOptions()
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,1000", "--force-device-scale-factor=1"]:
        options.add_argument(arg)
    binary = os.environ.get("CHROMIUM_BINARY") or "/usr/bin/chromium"
    if os.path.exists(binary):
        options.binary_location = binary
    service_path = os.environ.get("CHROMEDRIVER") or "/usr/bin/chromedriver"
    service = Service(service_path) if os.path.exists(service_path) else Service()
    return webdriver.Chrome(options=options, service=service)


def rounds_done(d):
    text = d.find_element(By.ID, "rounds-done").text  # "N / M"
    try:
        return int(text.split("/")[0].strip())
    except ValueError:
        return 0


def main(base, token, toml_file, shots):
    os.makedirs(shots, exist_ok=True)
    summary = {}
    d = driver()
    wait = WebDriverWait(d, 120, poll_frequency=0.2)
    try:
        d.get(base + "/#token=" + token)
        wait.until(EC.visibility_of_element_located((By.ID, "app")))
        # What the first load transferred (the page and every resource it pulled).
        summary["first_load_bytes"] = d.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "const r = performance.getEntriesByType('resource').filter(e => !e.name.includes('/api/'));"
            "return n.transferSize + r.reduce((a, e) => a + e.transferSize, 0);")
        summary["dom_interactive_ms"] = d.execute_script(
            "return performance.getEntriesByType('navigation')[0].domInteractive;")

        # Create a task from TOML.
        d.find_element(By.ID, "new-task").click()
        area = wait.until(EC.visibility_of_element_located((By.ID, "task-toml")))
        area.clear()
        area.send_keys(open(toml_file).read())
        d.find_element(By.ID, "create-task").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "task-state"), "created"))
        task_id = d.find_element(By.ID, "task-title").text
        summary["task"] = task_id

        # Start it; the devices join; rounds complete while we watch (server-sent events).
        d.find_element(By.ID, "btn-start").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "task-state"), "running"))
        wait.until(lambda d: rounds_done(d) >= 3)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rounds-table tbody tr")) >= 3)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-accuracy polyline"))
        summary["rows_seen"] = len(d.find_elements(By.CSS_SELECTOR, "#rounds-table tbody tr"))
        summary["phase_seen"] = d.find_element(By.ID, "phase").text
        d.save_screenshot(os.path.join(shots, "01-running.png"))

        # The round log, verified.
        d.find_element(By.CSS_SELECTOR, ".tabs button[data-tab='log']").click()
        d.find_element(By.ID, "verify-log").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "verify-result"), "Chain intact"))
        summary["verify"] = d.find_element(By.ID, "verify-result").text
        d.save_screenshot(os.path.join(shots, "02-round-log.png"))

        # The privacy budget: the tile, and the tab's chart of ε against round.
        wait.until(EC.visibility_of_element_located((By.ID, "privacy-tile")))
        d.find_element(By.CSS_SELECTOR, ".tabs button[data-tab='privacy']").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-privacy circle.pt-a"))
        summary["privacy_spent"] = d.find_element(By.ID, "privacy-spent").text
        summary["privacy_points"] = len(d.find_elements(By.CSS_SELECTOR, "#chart-privacy circle.pt-a"))
        d.save_screenshot(os.path.join(shots, "02-privacy.png"))

        # Pause: the state changes and rounds stop.
        d.find_element(By.ID, "btn-pause").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "task-state"), "paused"))
        summary["paused_at"] = rounds_done(d)
        d.save_screenshot(os.path.join(shots, "03-paused.png"))

        # Resume: rounds go on.
        d.find_element(By.ID, "btn-resume").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "task-state"), "running"))
        wait.until(lambda d: rounds_done(d) >= summary["paused_at"] + 1)
        summary["resumed_to"] = rounds_done(d)

        # Stop, confirming the dialog.
        d.find_element(By.ID, "btn-stop").click()
        WebDriverWait(d, 10).until(EC.alert_is_present()).accept()
        wait.until(EC.text_to_be_present_in_element((By.ID, "task-state"), "stopped"))
        summary["final_state"] = d.find_element(By.ID, "task-state").text
        d.find_element(By.CSS_SELECTOR, ".tabs button[data-tab='rounds']").click()
        d.save_screenshot(os.path.join(shots, "04-stopped.png"))

        # Phone width: the same view, readable.
        d.set_window_size(390, 844)
        time.sleep(0.5)  # let the layout settle for the screenshot (not an assertion)
        summary["phone_overflow_px"] = d.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
        d.save_screenshot(os.path.join(shots, "05-phone.png"))
    except Exception:
        d.save_screenshot(os.path.join(shots, "failure.png"))
        with open(os.path.join(shots, "failure.html"), "w") as f:
            f.write(d.page_source)
        raise
    finally:
        d.quit()
    print(json.dumps(summary))


if __name__ == "__main__":
    main(*sys.argv[1:5])
