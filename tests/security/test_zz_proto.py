from tests.security.conftest import *  # noqa

def test_proto(app, ada, party, signed_in):
    rp = party()
    b = signed_in()
    t = rp.tokens(b)
    print(t.keys())
    r = rp.refresh(t["refresh_token"])
    print(r.status_code, r.get_json().keys())
    assert rp.active(t["access_token"])
    print(b.cookie(), b.cookie(FLASK_COOKIE))
