import asyncio
from loadtest.peer import SyntheticSite

async def test_one_to_one(hoinghi_server):
    pub = SyntheticSite(hoinghi_server.url, hoinghi_server.token("hub", "hub"))
    sub = SyntheticSite(hoinghi_server.url, hoinghi_server.token("s1"), publish_video=False, publish_audio=False)
    await pub.join(); await sub.join()
    await pub.start_media(); await sub.start_media()
    await asyncio.sleep(5)
    print(sub.slots)
    print({m: (r.kind, r.frames, r.rate(), r.sizes) for m, r in sub.received.items()})
    print(await sub.inbound_stats())
    t = hoinghi_server.signaling.rooms["demo"].router.transports
    for pid, tr in t.items():
        print(pid, tr.packets_in, tr.packets_out, tr.dropped_in)
    await pub.close(); await sub.close()
