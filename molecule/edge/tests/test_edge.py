"""The edge as a client meets it: a real certificate from the ACME server, HTTPS only, modern
TLS, rate limiting with JSON answers, and nothing but 80/443 open."""

import pytest
import testinfra

gateway = testinfra.get_host("podman://edge-gw")
client = testinfra.get_host("podman://edge-client")
ROOT = "/tmp/pebble-root.pem"


@pytest.fixture(scope="module")
def acme_root():
    """The ACME server's issuing root, as published on its management port."""
    client.check_output(f"curl -sfk https://edge-acme:15000/roots/0 -o {ROOT}")
    return ROOT


def curl(args: str) -> str:
    return client.check_output(f"curl -s --max-time 10 {args}")


def served_certificate(field: str) -> str:
    """One field (issuer, serial) of the certificate the gateway serves to clients."""
    return client.check_output(
        "openssl s_client -connect edge-gw:443 -servername edge-gw </dev/null 2>/dev/null"
        f" | openssl x509 -noout -{field}"
    )


def test_https_answers_with_the_certificate_issued_by_the_acme_server(acme_root):
    body = curl(f"--cacert {acme_root} https://edge-gw/classify")
    assert '"served_by": "upstream stand-in"' in body
    assert "Pebble" in served_certificate("issuer")


def test_http_redirects_to_https_except_acme_challenges():
    assert curl("-o /dev/null -w '%{http_code} %{redirect_url}' http://edge-gw/classify") == (
        "301 https://edge-gw/classify"
    )
    challenge = curl("-o /dev/null -w '%{http_code}' http://edge-gw/.well-known/acme-challenge/x")
    assert challenge == "404"  # served from the webroot, not redirected


@pytest.mark.parametrize(
    ("version", "accepted"),
    [("tls1", False), ("tls1_1", False), ("tls1_2", True), ("tls1_3", True)],
)
def test_only_tls_1_2_and_1_3_are_accepted(version, accepted):
    # SECLEVEL=0 lets the client offer the old versions: a refusal is then the server's.
    result = client.run(
        f"openssl s_client -connect edge-gw:443 -servername edge-gw -{version} "
        "-cipher 'DEFAULT:@SECLEVEL=0' </dev/null"
    )
    assert (result.rc == 0) is accepted, result.stderr[-500:]


def test_security_headers(acme_root):
    headers = curl(f"--cacert {acme_root} -D - -o /dev/null https://edge-gw/classify").lower()
    assert "strict-transport-security: max-age=63072000; includesubdomains" in headers
    assert "x-content-type-options: nosniff" in headers
    assert "x-frame-options: deny" in headers


def test_rate_limit_answers_429_with_a_json_body(acme_root):
    codes = client.check_output(
        f"for i in $(seq 40); do curl -s --cacert {acme_root} -o /tmp/last.json "
        "-w '%{http_code}\\n' https://edge-gw/classify; "
        # An if, not &&: the loop's status must not depend on the last response being a 429.
        "if grep -qs rate_limited /tmp/last.json; then cp /tmp/last.json /tmp/429.json; fi; "
        "done"
    ).split()
    assert "200" in codes and "429" in codes
    assert '"code": "rate_limited"' in client.check_output("cat /tmp/429.json")


def test_upstream_down_gives_a_json_502(acme_root):
    gateway.check_output("systemctl stop upstream-standin")
    try:
        client.run("sleep 1")
        result = curl(f"--cacert {acme_root} -w ' %{{http_code}}' https://edge-gw/classify")
        assert result.endswith(" 502") and '"code": "bad_gateway"' in result
    finally:
        gateway.check_output("systemctl start upstream-standin")


def test_from_outside_only_80_and_443_are_open():
    for port in (80, 443):
        assert client.run(f"nc -z -w 3 edge-gw {port}").rc == 0, port
    # The stand-in listens on all interfaces, yet the firewall hides it.
    from_inside = "import urllib.request as u; u.urlopen('http://127.0.0.1:3000/classify')"
    assert gateway.run(f'python3 -c "{from_inside}"').rc == 0
    assert client.run("nc -z -w 3 edge-gw 3000").rc != 0
    status = gateway.check_output("ufw status verbose")
    assert "deny (incoming)" in status and "LIMIT IN" in status


def test_renewal_is_scheduled_and_reloads_nginx():
    timer = gateway.service("certbot.timer")
    assert timer.is_enabled and timer.is_running
    hook = gateway.file("/etc/letsencrypt/renewal-hooks/deploy/reload-nginx")
    assert hook.mode & 0o111 and "systemctl reload nginx" in hook.content_string


def test_a_renewal_is_served_without_a_restart():
    """A forced renewal, as the timer would run it, reaches clients through the deploy hook."""
    before = served_certificate("serial")
    nginx_pid = gateway.check_output("systemctl show -p MainPID --value nginx")
    result = gateway.run(
        "REQUESTS_CA_BUNDLE=/etc/ssl/bento-fleet-test-acme-ca.pem "
        "certbot renew --force-renewal --no-random-sleep-on-renew --cert-name edge-gw "
        "--non-interactive"
    )
    assert result.rc == 0, result.stdout[-1500:] + result.stderr[-1500:]
    assert served_certificate("serial") != before
    assert gateway.check_output("systemctl show -p MainPID --value nginx") == nginx_pid
