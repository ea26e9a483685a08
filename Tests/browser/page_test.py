#!/usr/bin/env python3
"""Drives the gateway's web page in headless Chromium (Selenium): sign in, start a quiz, reload
mid-session, wait for the rendered quiz, and check that no event is shown twice or missed.

Usage: page_test.py BASE_URL TOKEN [SCREENSHOT.png]. Exits 0 when every check holds. Bounded:
every wait has a timeout and the browser is always quit.
"""
import json
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

base, token = sys.argv[1], sys.argv[2]
shot = sys.argv[3] if len(sys.argv) > 3 else None


def api(path):
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def check(ok, message):
    if not ok:
        print("FAIL: " + message)
        sys.exit(1)
    print("ok: " + message)


options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_page_load_timeout(30)
try:
    wait = WebDriverWait(driver, 60)
    driver.get(base + "/")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    wait.until(EC.visibility_of_element_located((By.ID, "start-form")))
    topic = driver.find_element(By.ID, "topic")
    topic.clear()
    topic.send_keys("Redis streams")
    questions = driver.find_element(By.ID, "questions")
    questions.clear()
    questions.send_keys("3")
    delay = driver.find_element(By.ID, "delay")
    delay.clear()
    delay.send_keys("700")
    driver.find_element(By.ID, "start-button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#events li.event")) >= 4)
    session = driver.find_element(By.ID, "sid").text
    before = [li.get_attribute("data-id") for li in driver.find_elements(By.CSS_SELECTOR, "#events li.event")]
    status = api("/v1/sessions/" + session)["status"]
    check(status in ("queued", "running"), "reloading mid-session (status %s, %d events shown)" % (status, len(before)))
    driver.refresh()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ended") == "true")
    wait.until(lambda d: d.find_element(By.ID, "quiz").get_attribute("data-ready") == "true")
    shown = [li.get_attribute("data-id") for li in driver.find_elements(By.CSS_SELECTOR, "#events li.event")]
    check(shown[: len(before)] == before, "the events seen before the reload are still shown, in order")
    check(len(shown) == len(set(shown)), "no event is shown twice (%d shown)" % len(shown))
    stream = [e["id"] for e in api("/v1/sessions/%s/events" % session)["events"]]
    check(shown == stream, "every event of the stream is shown, none missed (%d)" % len(stream))
    rendered = driver.find_elements(By.CSS_SELECTOR, "#quiz .q")
    check(len(rendered) == 3, "the quiz is rendered as 3 questions")
    check(len(rendered[0].find_elements(By.CSS_SELECTOR, "input[type=radio]")) == 4, "each question has 4 choices")
    rendered[0].find_elements(By.CSS_SELECTOR, "input[type=radio]")[1].click()
    check("correct" in rendered[0].get_attribute("class") or "wrong" in rendered[0].get_attribute("class"), "answering marks it")
    check(driver.find_element(By.ID, "status").text == "done", "the status shows done")
    if shot:
        driver.save_screenshot(shot)
    print("PASS")
finally:
    driver.quit()
