"""Locust load test with the original service's traffic mix and pacing, for people used to its
reports.

    locust -f bench/locustfile.py --host http://127.0.0.1:8080 --headless -u 3000 -r 100 -t 90s

User classes and weights follow the original's locustfile: customers buying every 2-8 s (with
`x-client-time`, and now and then a high-value buy with `x-timestamp`), light customers every
5-12 s, heavy ones every 0.5-3 s, flash-sale bursts of 3-6 buys stamped with `x-request-start`
in ms, and admins every 5-15 s reading stats over 0.1 to 168 hours, health and the service pages.
The slow users keep their keep-alive connections idle for up to 15 s between requests, which is
what exposes a server that closes idle connections too early (see --idle-timeout).

Every failure counts: a non-2xx answer or a connection error.
"""
import json
import random
import time
from datetime import datetime, timezone

from locust import HttpUser, between, task


def iso_now():
    return datetime.now(timezone.utc).isoformat()


def buy_body(promotions=10, price=None):
    body = {
        "user_id": random.randint(1_000, 50_000),
        "promotion_id": random.randint(1, promotions),
        "product_id": random.randint(100, 999),
        "product_quantity": random.randint(1, 5),
    }
    if price is not None:
        body["unit_price_cents"] = price
    return body


class Customer(HttpUser):
    weight = 20
    wait_time = between(2, 8)

    def on_start(self):
        self.client.get("/health")

    @task(10)
    def buy(self):
        body = buy_body(price=random.choice([999, 1999, 4999, 9999, 19999]))
        self.client.post("/buy", json=body, headers={"x-client-time": str(int(time.time()))}, name="/buy")

    @task(2)
    def high_value_buy(self):
        body = buy_body(promotions=5, price=random.randint(99_999, 499_999))
        self.client.post("/buy", json=body, headers={"x-timestamp": iso_now()}, name="/buy")


class Browser(HttpUser):
    """Most visitors only look: views of a promotion page (sent as navigator.sendBeacon sends
    them, text/plain), about one in ten followed by a buy of what they viewed (SPEC §9)."""

    weight = 40
    wait_time = between(1, 5)

    @task(10)
    def view(self):
        self.user_id = random.randint(1_000, 50_000)
        self.promotion_id = random.randint(1, 10)
        body = {"user_id": self.user_id, "promotion_id": self.promotion_id, "product_id": random.randint(100, 999)}
        self.client.post("/view", data=json.dumps(body), headers={"content-type": "text/plain;charset=UTF-8"}, name="/view")

    @task(1)
    def buy_after_view(self):
        body = buy_body(price=random.choice([999, 1999, 4999]))
        body["user_id"] = getattr(self, "user_id", body["user_id"])
        body["promotion_id"] = getattr(self, "promotion_id", body["promotion_id"])
        self.client.post("/buy", json=body, name="/buy")


class LightCustomer(Customer):
    weight = 5
    wait_time = between(5, 12)


class HeavyCustomer(Customer):
    weight = 15
    wait_time = between(0.5, 3)


class FlashSale(HttpUser):
    weight = 2
    wait_time = between(0.1, 1)

    @task
    def burst(self):
        promotion = random.randint(1, 3)
        for _ in range(random.randint(3, 6)):
            body = buy_body()
            body["promotion_id"] = promotion
            start_ms = int(time.time() * 1000)
            self.client.post("/buy", json=body, headers={"x-request-start": str(start_ms)}, name="/buy")
            time.sleep(0.05)


class Admin(HttpUser):
    weight = 1
    wait_time = between(5, 15)

    def on_start(self):
        self.client.get("/health")

    @task(5)
    def stats_over_every_window(self):
        for hours in [0.1, 1, 6, 24, 168]:
            self.client.get(f"/stats?timeframe_hours={hours}", name="/stats")
            time.sleep(0.3)

    @task(4)
    def health(self):
        self.client.get("/health")

    @task(3)
    def recent_stats(self):
        for hours in [0.1, 0.5, 1, 2]:
            self.client.get(f"/stats?timeframe_hours={hours}", name="/stats")
            time.sleep(0.2)

    @task(2)
    def pages(self):
        for page in ["/", "/docs", "/redoc"]:
            self.client.get(page)
            time.sleep(0.5)

    @task(1)
    def promotions(self):
        self.client.get("/promotions?limit=10", name="/promotions")
        self.client.get(f"/promotions/{random.randint(1, 10)}/stats?timeframe_hours=24", name="/promotions/{id}/stats")
