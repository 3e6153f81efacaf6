"""A crawl writes back the files of damaged media from X, Bluesky and Mastodon posts behind its cursor."""

from __future__ import annotations

from bot.ingest.crawl import crawl_once
from storage import Store
from storage.check import check_and_repair, check_store
from tests.sources_support import http_for
from tests.test_crawl_networks import all_networks_config, networks  # noqa: F401  (fixture)


def test_the_next_crawl_downloads_damaged_media_again(networks, tmp_path):  # noqa: F811
    config = all_networks_config(tmp_path)
    with Store.open(config.data_path) as store:
        crawl_once(store, config, http=http_for(networks.clock))
        by_source = {
            row["source"]: row
            for row in store.query(
                "SELECT p.source, m.id, m.sha256, m.ext FROM media m JOIN post_media pm ON pm.media_id = m.id"
                " JOIN posts p ON p.id = pm.post_id WHERE m.status = 'ok' GROUP BY p.source"
            )
        }
        assert sorted(by_source) == ["bluesky", "mastodon", "x"]
        store.blobs.path(by_source["x"]["sha256"], by_source["x"]["ext"]).unlink()
        truncated = store.blobs.path(by_source["bluesky"]["sha256"], by_source["bluesky"]["ext"])
        truncated.write_bytes(truncated.read_bytes()[:10])
        assert len(check_and_repair(store).problems) == 2 and store.damaged_count() == 2

        summary = crawl_once(store, config, http=http_for(networks.clock))
        assert {run.source: run.ingest.restored for run in summary.runs} == {"x": 1, "bluesky": 1, "mastodon": 0}
        assert {run.source: run.ingest.new_posts for run in summary.runs} == {"x": 0, "bluesky": 0, "mastodon": 0}
        assert store.damaged_count() == 0
        assert check_store(store, read_data=True).ok
