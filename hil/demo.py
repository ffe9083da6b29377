"""`cpe-agent demo`: VoIP-only LTE failover, shown in the virtual lab with real parts.

Builds the lab (network namespaces, sipp SBCs, a web host), starts a real mosquitto
broker at the provider and a subscriber standing in for the fleet dashboard, starts
the real agent in the CPE namespace, then:

  1. a silent blackhole upstream of the primary (the link stays up): VoIP moves to LTE;
  2. the primary restored: failback after the (shortened) dwell;
  3. the primary's cable pulled, with the customer's own fallback route via LTE in
     place: VoIP moves, the LAN PC's web traffic is blocked and counted on LTE;
  4. restored again; figures; everything torn down (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hil.bench.voice_path import CELLULAR_SOURCE, PRIMARY_SOURCE, VoicePath, wait_until
from hil.lab import Lab
from hil.lab import topology as t
from hil.sims.rtp_stream import voice_path_gaps

SBC = t.SBC_ADDRESSES["sbc-east"]
WEB_URL = f"http://{t.WEB_ADDRESS}/"
FALLBACK_ROUTE = ["default", "via", "100.64.100.1", "dev", "lte0", "metric", "500"]


class Narrator:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {text}", flush=True)

    def banner(self, text: str) -> None:
        print(f"\n=== {text}", flush=True)


class FleetSubscriber:
    """mosquitto_sub at the provider: what the fleet dashboard receives."""

    def __init__(self, lab: Lab, out: Path) -> None:
        self.out = out
        self.seen_kinds: list[Any] = []
        self.proc = lab.spawn(
            "sbc",
            ["mosquitto_sub", "-h", t.MQTT_ADDRESS, "-p", str(t.MQTT_PORT), "-t", "cpe/v1/#", "-v"],
            stdout=out.open("wb"),
            stderr=subprocess.DEVNULL,
        )

    def messages(self, topic_suffix: str) -> list[dict[str, Any]]:
        found = []
        for line in self.out.read_text(errors="replace").splitlines():
            topic, _, payload = line.partition(" ")
            if topic.endswith(topic_suffix):
                try:
                    found.append(json.loads(payload))
                except ValueError:
                    continue
        return found

    def stop(self) -> None:
        self.proc.terminate()


SMTP_PORT = 2525
FLEET_TOML = """[mqtt]
host = "{broker}"
port = {port}
tls = false

[smtp]
host = "{broker}"
port = {smtp_port}
from_address = "cpe-alerts@provider.example"

[notifier]
client_id = "demo-notifier"
state_file = "{work}/notifier.db"
sites_file = "{work}/sites.toml"
support_emails = ["noc@provider.example"]
retry_s = 2
"""
SITES_TOML = """[sites.lab-site-1]
name = "The lab's business site"
emails = ["office@customer.example"]
"""


class Mailroom:
    """The provider's notifier (`cpe-agent fleet notify`) and a real SMTP server
    (aiosmtpd) at the provider, printing what it receives."""

    def __init__(self, lab: Lab, work: Path) -> None:
        self.out = work / "smtp.log"
        (work / "fleet.toml").write_text(
            FLEET_TOML.format(
                broker=t.MQTT_ADDRESS, port=t.MQTT_PORT, smtp_port=SMTP_PORT, work=work
            )
        )
        (work / "sites.toml").write_text(SITES_TOML)
        lab.spawn(
            "sbc",
            [
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                f"{t.MQTT_ADDRESS}:{SMTP_PORT}",
                "-c",
                "aiosmtpd.handlers.Debugging",
            ],
            name="smtp",
            stdout=self.out.open("wb"),
        )
        cpe_agent = Path(sys.executable).with_name("cpe-agent")
        lab.spawn(
            "sbc",
            [str(cpe_agent), "fleet", "notify", "--config", str(work / "fleet.toml")],
            name="notifier",
        )

    def subjects(self) -> list[str]:
        try:
            text = self.out.read_text(errors="replace")
        except OSError:
            return []
        subjects: list[str] = []
        folding = False
        for line in text.splitlines():
            if line.startswith("Subject:"):
                subjects.append(line.split(":", 1)[1].strip())
                folding = True
            elif folding and line[:1] in (" ", "\t"):  # a folded header goes on
                subjects[-1] += " " + line.strip()
            else:
                folding = False
        return subjects


def show_mail(n: Narrator, mail: Mailroom, before: int) -> None:
    """Wait (bounded) for the notifier's next e-mail and show its subject."""
    if wait_until_quiet(lambda: len(mail.subjects()) > before, 15):
        for subject in mail.subjects()[before:]:
            n.say(f'e-mail to the customer and support: "{subject}"')
    else:
        n.say("no e-mail from the notifier yet (see its log in the lab's logs directory)")


def show_modem(n: Narrator, voice: VoicePath) -> None:
    def modem() -> Any:
        return (voice.agent.status() or {}).get("modem")

    if wait_until_quiet(modem, 15):
        m = modem()
        n.say(
            f"LTE modem (simulated Quectel EC25 on a pty): coverage {m.get('coverage')}, "
            f"RSRP {m.get('rsrp_dbm')} dBm, SINR {m.get('sinr_db')} dB, {m.get('registration')}"
        )


def run(dwell_s: float) -> int:
    n = Narrator()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cpe-demo-") as tmp:
        work = Path(tmp)
        lab = Lab()
        n.banner("cpe-agent demo: VoIP-only LTE failover in a virtual lab")
        n.say("building the lab: phone, LAN PC, CPE, primary ISP, LTE carrier (CGNAT), SBCs, web")
        try:
            lab.up(mqtt=True)
            n.say(f"lab up; SBCs {', '.join(t.SBC_ADDRESSES.values())} answer SIP (sipp)")
            fleet = FleetSubscriber(lab, work / "fleet.log")
            mail = Mailroom(lab, work)
            n.say(
                "the provider's notifier (cpe-agent fleet notify) and an SMTP server "
                f"(aiosmtpd) at {t.MQTT_ADDRESS}:{SMTP_PORT}"
            )
            n.say(
                f"mosquitto broker at the provider ({t.MQTT_ADDRESS}:{t.MQTT_PORT}); "
                "fleet subscriber on cpe/v1/#"
            )
            voice = VoicePath(lab, work, overrides={"CPE_AGENT_FAILOVER__DWELL_S": str(dwell_s)})
            voice.start(stream=False)
            n.say(
                f"agent running in {lab.ns('cpe')}; failback dwell shortened to {dwell_s:g} s "
                "for the demo (production default 120 s)"
            )
            show_links(n, voice.agent.status())
            show_modem(n, voice)
            voice.start_stream()
            n.say(
                f"phone streams RTP-like packets, 50/s, to SBC {SBC}: arriving from "
                f"{PRIMARY_SOURCE} (the primary)"
            )
            n.say(f"LAN PC fetches {WEB_URL}: HTTP {lab.http_get('pc', WEB_URL)} via the primary")

            n.banner("1. silent blackhole upstream of the primary (its link stays up)")
            figures["blackhole"] = cut_and_restore(
                n, lab, voice, fleet, mail, ("blackhole",), "clear"
            )

            n.banner("2. the primary's cable pulled; the customer has a fallback route via LTE")
            lab.exec("cpe", ["ip", "route", "add", *FALLBACK_ROUTE], check=True)
            lab.exec("cpe", ["sysctl", "-qw", "net.ipv4.conf.all.ignore_routes_with_linkdown=1"])
            figures["cable"] = cut_and_restore(
                n, lab, voice, fleet, mail, ("down",), "up", web=True
            )

            n.banner("figures")
            for name, f in figures.items():
                n.say(
                    f"{name}: voice-path gap at the SBC {f['gap_s']:.2f} s ({f['lost']} packets), "
                    f"agent switch {f['switch_ms']:.0f} ms, "
                    f"failback after {f['on_lte_s']:.1f} s on LTE"
                )
            n.say(
                "for scale: pfSense dpinger ~15 s, MikroTik check-gateway 10-20 s, "
                "mwan3 defaults 40-130 s"
            )
            n.say(f"fleet received {len(fleet.messages('/evt'))} events over MQTT")

            n.banner("3. the installer's failover test (cpe-agent failover-test)")
            figures["installer_test_exit"] = installer_test(n, lab, voice)
            wait_until_quiet(lambda: any(m.get("kind") == "test_finished"
                                         for m in fleet.messages("/evt")), 10)
            finished = [m for m in fleet.messages("/evt") if m.get("kind") == "test_finished"]
            if finished:
                n.say(f"the provider received the report as event test_finished "
                      f"(verdict {finished[-1].get('data', {}).get('verdict')})")
            voice.stop()
            fleet.stop()
        except KeyboardInterrupt:
            print("\ninterrupted: tearing the lab down", flush=True)
            return 130
        finally:
            lab.down()
            n.say("lab torn down")
    return 0


def installer_test(n: Narrator, lab: Lab, voice: VoicePath) -> int:
    """What an installer runs at a new site, through the running agent: record where the
    modem is, then the test, its checklist filling in as it goes."""
    agent = voice.agent
    cpe_agent = str(Path(sys.executable).with_name("cpe-agent"))
    env = {**os.environ, "CPE_AGENT_AGENT__STATE_DIR": str(agent.state_dir),
           "CPE_AGENT_AGENT__RUNTIME_DIR": str(agent.runtime_dir)}
    config = ["--config", str(lab.config_path)]
    n.say("$ cpe-agent location record   (the modem's cells at the business address)")
    lab.exec("cpe", [cpe_agent, "location", "record", "--samples", "1", "--interval-s", "0",
                     *config], env=env, timeout=60)
    n.say("$ cpe-agent failover-test")
    process = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("cpe"), cpe_agent, "failover-test", *config],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        print("    " + line.rstrip(), flush=True)
    return process.wait(timeout=180)


def cut_and_restore(
    n: Narrator,
    lab: Lab,
    voice: VoicePath,
    fleet: FleetSubscriber,
    mail: Mailroom,
    impair: tuple[str, ...],
    restore: str,
    web: bool = False,
) -> dict[str, Any]:
    mails = len(mail.subjects())
    failovers = len(voice.agent.events("failover"))
    failbacks = len(voice.agent.events("failback"))
    start_line = voice.line_count()
    lab.impair("primary", *impair)
    n.say(f"cut: primary {' '.join(impair)}")
    wait_until(lambda: len(voice.agent.events("failover")) > failovers, 20, "the failover")
    event = voice.agent.events("failover")[-1]["data"]
    n.say(
        f"agent: {event['from']} -> CELLULAR ({event['reason']}); router switched in "
        f"{event['switch_ms']:.0f} ms; "
        f"{event['conntrack_flushed']} SIP/RTP conntrack entries flushed"
    )
    wait_until(lambda: voice.last_source() == CELLULAR_SOURCE, 20, "RTP via LTE")
    gaps = voice_path_gaps(
        voice.arrivals(max(0, start_line - 100)), PRIMARY_SOURCE, CELLULAR_SOURCE
    )
    n.say(
        f"RTP now arrives from {CELLULAR_SOURCE} (the LTE carrier's NAT): "
        f"the SBC heard silence for {gaps.failover_gap_s:.2f} s"
    )
    sip = lab.sip_options("phone", SBC, timeout_s=2.0)
    n.say(
        f"phone's SIP OPTIONS to {SBC} over LTE: "
        f"{sip.get('status', 'no answer')} {sip.get('reason', '')}".rstrip()
    )
    if web:
        code = lab.http_get("pc", WEB_URL, timeout_s=1.0)
        status = voice.agent.wait_for(
            lambda s: s.get("router", {}).get("blocked_packets", 0) > 0, 15, "blocked counter"
        )
        n.say(
            f"LAN PC's HTTP: {'blocked' if code is None else code}: data is not allowed on "
            f"LTE; {status['router']['blocked_packets']} packets dropped and counted"
        )
    else:
        n.say(
            f"LAN PC's HTTP: {lab.http_get('pc', WEB_URL, timeout_s=1.0) or 'no way out'} "
            "(web traffic is never moved to LTE)"
        )
    show_fleet(n, fleet, "failover")
    show_mail(n, mail, mails)
    mails = len(mail.subjects())
    lab.impair("primary", restore)
    if web:
        lab.exec("cpe", ["ip", "route", "del", *FALLBACK_ROUTE])
    n.say(f"restored: primary {restore}; the agent waits until its 10 s quality window is clean")
    voice.agent.wait_mode("RECOVERING", 30)
    n.say("agent: RECOVERING (primary healthy, dwelling before failback)")
    wait_until(lambda: len(voice.agent.events("failback")) > failbacks, 120, "the failback")
    back = voice.agent.events("failback")[-1]["data"]
    wait_until(lambda: voice.last_source() == PRIMARY_SOURCE, 20, "RTP via the primary")
    n.say(
        f"agent: failback to PRIMARY after {back['on_cellular_s']} s on LTE; "
        f"RTP from {PRIMARY_SOURCE} again; web: HTTP {lab.http_get('pc', WEB_URL)}"
    )
    show_fleet(n, fleet, "failback")
    show_mail(n, mail, mails)
    return {
        "gap_s": gaps.failover_gap_s or 0.0,
        "lost": gaps.lost,
        "switch_ms": event["switch_ms"],
        "on_lte_s": back["on_cellular_s"] or 0.0,
    }


def show_links(n: Narrator, status: dict[str, Any] | None) -> None:
    if not status:
        return
    for role in ("primary", "cellular"):
        link = status["links"][role]
        n.say(f"{role}: {link['verdict']} ({link.get('reason', '')})")


def show_fleet(n: Narrator, fleet: FleetSubscriber, kind: str) -> None:
    before = fleet.seen_kinds.count(kind)

    def seen() -> bool:
        kinds = [m.get("kind") for m in fleet.messages("/evt")]
        if kinds.count(kind) > before:
            fleet.seen_kinds = kinds
            return True
        return False

    if wait_until_quiet(seen, 10):
        n.say(f"fleet dashboard received the '{kind}' event over MQTT")
    else:
        n.say(f"fleet dashboard has not received a '{kind}' event over MQTT yet")


def wait_until_quiet(predicate: Any, timeout_s: float) -> bool:
    try:
        wait_until(predicate, timeout_s, "fleet event")
    except TimeoutError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cpe-agent demo in the virtual lab")
    parser.add_argument("--dwell-s", type=float, default=8.0)
    args = parser.parse_args(argv)
    return run(args.dwell_s)


if __name__ == "__main__":
    sys.exit(main())
