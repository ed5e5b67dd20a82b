"""Locust load test with the original service's traffic mix, for people used to its reports.

    locust -f bench/locustfile.py --host http://127.0.0.1:8080 --headless -u 300 -r 50 -t 60s

Users (weights as in the original): customers buying every 2-8 s (with `x-client-time`, and now and
then a high-value buy with `x-timestamp`), admins reading stats over 0.1 to 168 hours and the
service pages, and flash-sale bursts of 3-6 buys in a row stamped with `x-request-start` in ms.
"""
import random
import time
from datetime import datetime, timezone

from locust import HttpUser, between, task


def iso_now():
    return datetime.now(timezone.utc).isoformat()


def buy_body(price=None):
    body = {
        "user_id": random.randint(1, 1_000_000),
        "promotion_id": random.randint(1, 50),
        "product_id": random.randint(1, 500),
        "product_quantity": random.randint(1, 5),
    }
    if price is not None:
        body["unit_price_cents"] = price
    return body


class Customer(HttpUser):
    weight = 20
    wait_time = between(2, 8)

    @task(10)
    def buy(self):
        self.client.post("/buy", json=buy_body(), headers={"x-client-time": iso_now()}, name="/buy")

    @task(1)
    def high_value_buy(self):
        body = buy_body(price=random.randint(50_000, 500_000))
        self.client.post("/buy", json=body, headers={"x-timestamp": iso_now()}, name="/buy")


class Admin(HttpUser):
    weight = 1
    wait_time = between(2, 8)

    @task(5)
    def stats(self):
        hours = random.choice([0.1, 1, 6, 24, 168])
        self.client.get(f"/stats?timeframe_hours={hours}", name="/stats")

    @task(2)
    def health(self):
        self.client.get("/health")

    @task(1)
    def root(self):
        self.client.get("/")

    @task(1)
    def docs(self):
        self.client.get("/docs/", name="/docs")

    @task(1)
    def redoc(self):
        self.client.get("/redoc")


class FlashSale(HttpUser):
    weight = 2
    wait_time = between(2, 8)

    @task
    def burst(self):
        for _ in range(random.randint(3, 6)):
            start_ms = int(time.time() * 1000)
            self.client.post("/buy", json=buy_body(), headers={"x-request-start": f"t={start_ms}"}, name="/buy")
