"""The live log: read from an offset, ANSI colours rendered safely, polling stops at the end."""

import pytest
from django.urls import reverse

from experiments.ansi import ansi_to_html
from tests.factories import ExperimentFactory, JobFactory

pytestmark = pytest.mark.django_db
HX = {"HX-Request": "true"}


def test_ansi_colours_become_spans_and_text_is_escaped():
    out = ansi_to_html("\x1b[1;31merror\x1b[0m <b>&</b>")
    assert out.html == '<span class="ansi-bold ansi-fg-red">error</span> &lt;b&gt;&amp;&lt;/b&gt;'
    assert out.state == "" and out.held == ""


def test_ansi_state_carries_over_and_a_cut_sequence_is_held():
    first = ansi_to_html("\x1b[32mgreen start\x1b[")
    assert first.html == '<span class="ansi-fg-green">green start</span>'
    assert first.held == "\x1b[" and first.state == "32"
    second = ansi_to_html("1mmore\x1b[0m plain", first.state)
    assert second.html.startswith('<span class="ansi-fg-green">1mmore</span>')
    third = ansi_to_html("\x1b[1mmore\x1b[0m plain", first.state)
    assert third.html == '<span class="ansi-bold ansi-fg-green">more</span> plain'


def test_ansi_drops_other_escapes():
    assert ansi_to_html("\x1b]0;title\x07a\x1b[2Kb\x1b[?25lc").html == "abc"


def log_file(local_root, name, data):
    """A log where the local backend writes them: the only kind of place SkyDeck reads logs from."""
    path = local_root / ".logs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_log_endpoint_appends_from_the_offset(owner_client, local_root):
    log = log_file(local_root, "job.log", b"")
    log.write_bytes(b"line one\n\x1b[33mwarn\x1b[0m\n")
    experiment = ExperimentFactory(name="logged")
    JobFactory(
        experiment=experiment, attempt=1, status="SUCCEEDED", log_path=str(log), cluster_name="sd-logged", sky_job_id=1
    )
    url = reverse("experiments:job_log", args=["logged", 1])
    body = owner_client.get(url + "?offset=0", headers=HX).content.decode()
    assert 'hx-swap-oob="beforeend:#log-text"' in body
    assert 'line one\n<span class="ansi-fg-yellow">warn</span>\n' in body
    assert "End of log" in body  # finished job, whole log read: polling stops
    body = owner_client.get(url + f"?offset={log.stat().st_size}", headers=HX).content.decode()
    assert "hx-swap-oob" not in body


def test_log_of_an_active_job_keeps_polling_with_the_next_offset(owner_client, local_root):
    log = log_file(local_root, "job.log", b"abc")
    experiment = ExperimentFactory(name="tailing")
    JobFactory(
        experiment=experiment, attempt=1, status="RUNNING", log_path=str(log), cluster_name="sd-tailing", sky_job_id=1
    )
    body = owner_client.get(
        reverse("experiments:job_log", args=["tailing", 1]) + "?offset=1", headers=HX
    ).content.decode()
    assert ">bc</div>" in body
    assert "offset=3" in body and 'hx-trigger="every 2s"' in body


def test_log_of_a_job_without_output_yet(owner_client, local_root):
    experiment = ExperimentFactory(name="quiet")
    JobFactory(experiment=experiment, attempt=1, status="LAUNCHING")
    body = owner_client.get(reverse("experiments:job_log", args=["quiet", 1]), headers=HX).content.decode()
    assert "hx-swap-oob" not in body and "Following the log" in body


def test_a_log_path_outside_skydecks_log_folders_is_not_read(owner_client, local_root, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not show me")
    experiment = ExperimentFactory(name="sneaky")
    JobFactory(experiment=experiment, attempt=1, status="SUCCEEDED", log_path=str(secret))
    outside = local_root / ".logs" / ".." / ".." / "secret.txt"
    JobFactory(experiment=experiment, attempt=2, status="SUCCEEDED", log_path=str(outside))
    for attempt in (1, 2):
        body = owner_client.get(reverse("experiments:job_log", args=["sneaky", attempt]), headers=HX).content.decode()
        assert "do not show me" not in body and "without output" in body


def test_a_finished_job_without_output_says_so(owner_client, local_root):
    experiment = ExperimentFactory(name="silent")
    JobFactory(experiment=experiment, attempt=1, status="SUCCEEDED", log_path=str(local_root / ".logs" / "none.log"))
    body = owner_client.get(reverse("experiments:job_log", args=["silent", 1]), headers=HX).content.decode()
    assert "ended (Succeeded) without output" in body and "hx-get" not in body


def test_a_multibyte_character_cut_by_a_chunk_is_read_whole(local_root):
    from experiments import logs

    path = log_file(local_root, "utf8.log", ("é" * 10).encode())
    first = logs.read(str(path), 0, limit=5)  # 5 bytes: two é and half of the third
    assert first.text == "éé" and first.offset == 4
    assert logs.read(str(path), first.offset).text == "é" * 8
