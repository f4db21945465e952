"""A real `coalition serve` on a fresh SQLite database for the tests, and the admin calls
that register merchants and enroll members.

The server binary is $COALITION_BIN, else target/debug/coalition under $CARGO_TARGET_DIR
(or the repository's target/): build it first with `cargo build --bin coalition`.
"""

import os
import pathlib
import secrets
import subprocess
import tempfile

import grpc
import pytest

from coalition_client import Signer
from coalition_client._pb.coalition.v1 import admin_pb2, admin_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[3]
ADMIN_TOKEN = "python-tests-admin-token-0123456789"


def server_binary() -> str:
    if "COALITION_BIN" in os.environ:
        return os.environ["COALITION_BIN"]
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "debug" / "coalition"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `cargo build --bin coalition` or set COALITION_BIN")
    return str(binary)


class Server:
    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="coalition-python-")
        # The server takes every COALITION_* variable as a setting: pass it only ours.
        env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
        env.update(
            COALITION_DATABASE_URL=f"sqlite://{self.dir.name}/coalition.db",
            COALITION_LISTEN_ADDRESS="127.0.0.1:0",
            COALITION_METRICS_ADDRESS="off",
            COALITION_CONSOLE_ADDRESS="off",
            COALITION_ADMIN_TOKEN=ADMIN_TOKEN,
            COALITION_LOG_FILTER="warn",
        )
        env.pop("RUST_LOG", None)
        self.process = subprocess.Popen([server_binary(), "serve"], env=env,
                                        stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.process.kill()
            pytest.fail(f"the server did not start: {line!r}")
        self.address = line.removeprefix("listening on ").strip()
        self.channel = grpc.insecure_channel(self.address)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {ADMIN_TOKEN}"),)

    def merchant(self, merchant_id: str, category=admin_pb2.MERCHANT_CATEGORY_MALL_TENANT,
                 **terms) -> Signer:
        """Registers a merchant with a fresh key `key-1` and terms; returns its signer."""
        signer = Signer.from_seed(merchant_id, "key-1", secrets.token_bytes(32))
        self.admin.RegisterMerchant(
            admin_pb2.RegisterMerchantRequest(
                merchant_id=merchant_id, name=f"Merchant {merchant_id}", category=category,
                keys=[admin_pb2.MerchantKey(key_id="key-1", public_key=signer.public_key)],
            ),
            metadata=self.metadata,
        )
        self.admin.SetMerchantTerms(
            admin_pb2.SetMerchantTermsRequest(
                merchant_id=merchant_id, issue_price_minor_per_point="1.05",
                redeem_price_minor_per_point="0.95", **terms,
            ),
            metadata=self.metadata,
        )
        return signer

    def enroll(self, *members: str) -> None:
        response = self.admin.EnrollMembers(
            admin_pb2.EnrollMembersRequest(
                members=[admin_pb2.MemberEnrollment(member_id=m) for m in members]),
            metadata=self.metadata,
        )
        assert not response.refusals, response.refusals

    def stop(self) -> None:
        self.channel.close()
        self.process.kill()
        self.process.wait()
        self.dir.cleanup()


@pytest.fixture
def server():
    running = Server()
    yield running
    running.stop()
