"""geogate.core.addresses: canonical host strings, embedded IPv4, special-purpose ranges, host:port.

Table-driven in the style of Smokescreen's classifyAddr tests: every row is (input, expected...)
with a short comment. The published address-trick vectors (spellings that bypass naive checks) are
all here; each must come out as the address that will really be dialled, with the special range
of the address that decides (for an IPv6 transition form: the IPv4 it carries).
"""

from __future__ import annotations

import ipaddress

import pytest

from geogate.core.addresses import Address
from geogate.core.addresses import AddressError
from geogate.core.addresses import canonical_host
from geogate.core.addresses import classify
from geogate.core.addresses import embedded_ipv4
from geogate.core.addresses import is_localhost_name
from geogate.core.addresses import parse_ip
from geogate.core.addresses import special_range
from geogate.core.addresses import split_host_port

ip = ipaddress.ip_address


def canon_classify(text: str) -> tuple[str, Address | None]:
    """What the proxy does with a host string: canonicalise, then classify if it is an address."""
    host = canonical_host(text)
    parsed = parse_ip(host)
    return host, (classify(parsed) if parsed is not None else None)


# (input, canonical host, special range, embedded IPv4, embedding form)
ADDRESS_VECTORS = [
    # --- address tricks: IPv4 literal spellings glibc would dial as 127.0.0.1 ---
    ("127.1", "127.0.0.1", "loopback", None, None),  # two-part form: 127 . 0.0.1
    ("0x7f.1", "127.0.0.1", "loopback", None, None),  # hex first part
    ("0177.0.0.1", "127.0.0.1", "loopback", None, None),  # leading 0 = octal
    ("2130706433", "127.0.0.1", "loopback", None, None),  # one 32-bit decimal
    ("017700000001", "127.0.0.1", "loopback", None, None),  # one 32-bit octal
    ("127.0.0.1.", "127.0.0.1", "loopback", None, None),  # trailing dot
    ("127。0。0。1", "127.0.0.1", "loopback", None, None),  # U+3002 ideographic full stops (IDNA folds to '.')
    # --- address tricks: IPv6 forms carrying a special IPv4 ---
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1", "loopback", "127.0.0.1", "ipv4-mapped"),  # mapped, dotted
    ("[::ffff:7f00:1]", "::ffff:7f00:1", "loopback", "127.0.0.1", "ipv4-mapped"),  # mapped, hex
    ("[::127.0.0.1]", "::7f00:1", "loopback", "127.0.0.1", "ipv4-compatible"),  # deprecated compatible form
    ("[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe", "link-local", "169.254.169.254", "ipv4-mapped"),  # cloud metadata
    ("[64:ff9b::7f00:1]", "64:ff9b::7f00:1", "loopback", "127.0.0.1", "nat64"),  # NAT64 well-known prefix
    ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe", "link-local", "169.254.169.254", "nat64"),  # NAT64 -> metadata
    # RFC 8215 local-use: layout unknown
    ("[64:ff9b:1::a9fe:a9fe]", "64:ff9b:1::a9fe:a9fe", "nat64-local-undeclared", None, None),
    ("[2002:7f00:1::]", "2002:7f00:1::", "loopback", "127.0.0.1", "6to4"),  # 6to4 carrying loopback
    ("[2002:a9fe:a9fe::1]", "2002:a9fe:a9fe::1", "link-local", "169.254.169.254", "6to4"),  # CVE-2026-44589 form
    # client bits inverted
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback", "127.0.0.1", "teredo"),
    ("[fe80::1%25eth0]", "fe80::1", "link-local", None, None),  # URL-encoded zone id is dropped
    # --- address tricks, public controls: no special range, geolocated as 8.8.8.8 ---
    ("[::ffff:8.8.8.8]", "::ffff:808:808", None, "8.8.8.8", "ipv4-mapped"),
    ("[2002:808:808::1]", "2002:808:808::1", None, "8.8.8.8", "6to4"),
    # --- more IPv4 spellings ---
    ("0x7f000001", "127.0.0.1", "loopback", None, None),  # one 32-bit hex
    ("0X7F.0.0.1", "127.0.0.1", "loopback", None, None),  # upper-case hex prefix
    ("127.0.0.01", "127.0.0.1", "loopback", None, None),  # octal 01 in the last part
    ("0300.0250.0.1", "192.168.0.1", "private", None, None),  # all-octal RFC 1918
    ("10.1", "10.0.0.1", "private", None, None),  # two-part private
    ("169.254.43518", "169.254.169.254", "link-local", None, None),  # three-part metadata address
    ("1.2.65535", "1.2.255.255", None, None, None),  # three-part, 16-bit last part, public
    ("4294967295", "255.255.255.255", "broadcast", None, None),  # largest 32-bit value
    ("127.0.0.1..", "127.0.0.1", "loopback", None, None),  # several trailing dots
    ("１２７.０.０.１", "127.0.0.1", "loopback", None, None),  # full-width digits become ASCII first
    ("127．0．0．1", "127.0.0.1", "loopback", None, None),  # U+FF0E full-width full stop
    ("127｡0｡0｡1", "127.0.0.1", "loopback", None, None),  # U+FF61 half-width ideographic full stop
    ("  8.8.8.8  ", "8.8.8.8", None, None, None),  # surrounding blanks
    # --- more IPv6 forms ---
    ("::ffff:0:7f00:1", "::ffff:0:7f00:1", "loopback", "127.0.0.1", "ipv4-translated"),  # RFC 2765 translated
    ("::ffff:0:808:808", "::ffff:0:808:808", None, "8.8.8.8", "ipv4-translated"),  # translated, public
    ("[::ffff:10.0.0.1]", "::ffff:a00:1", "private", "10.0.0.1", "ipv4-mapped"),  # mapped RFC 1918
    ("[::ffff:100.64.0.1]", "::ffff:6440:1", "cgnat", "100.64.0.1", "ipv4-mapped"),  # mapped CGNAT
    ("64:ff9b::808:808", "64:ff9b::808:808", None, "8.8.8.8", "nat64"),  # NAT64 to a public address
    # RFC 4380 example client
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "documentation", "192.0.2.45", "teredo"),
    # Teredo, public client
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "2001:0:4136:e378:8000:63bf:f7f7:f7f7", None, "8.8.8.8", "teredo"),
    ("2001:0000::80ff:fefe", "2001::80ff:fefe", "loopback", "127.0.1.1", "teredo"),  # GHSA-j8q9 example: 127.0.1.1, not .0.1
    ("[2001:DB8::1]", "2001:db8::1", "documentation", None, None),  # upper-case hex is lower-cased
    ("fe80::1%eth0", "fe80::1", "link-local", None, None),  # raw zone id is dropped too
    ("[::ffff:127.0.0.1%25lo]", "::ffff:7f00:1", "loopback", "127.0.0.1", "ipv4-mapped"),  # zone id on a mapped form
    ("::1", "::1", "loopback", None, None),  # IPv6 loopback is not "IPv4-compatible 0.0.0.1"
    ("[::]", "::", "unspecified", None, None),  # :: is not "IPv4-compatible 0.0.0.0"
    ("2606:4700:4700::1111", "2606:4700:4700::1111", None, None, None),  # plain global unicast
]


@pytest.mark.parametrize(("text", "canonical", "special", "v4", "form"), ADDRESS_VECTORS,
                         ids=[row[0] for row in ADDRESS_VECTORS])
def test_address_vectors(text: str, canonical: str, special: str | None, v4: str | None, form: str | None) -> None:
    host, addr = canon_classify(text)
    assert host == canonical
    assert addr is not None, f"{text!r} must be read as an address, not a host name"
    assert str(addr.ip) == canonical
    assert addr.special == special
    assert (str(addr.embedded_ipv4) if addr.embedded_ipv4 else None) == v4
    assert addr.embedding == form
    assert not is_localhost_name(host)


# (input, canonical name, is a localhost name)
NAME_VECTORS = [
    ("localhost.", "localhost", True),  # address trick: trailing dot
    ("LOCALHOST.", "localhost", True),  # address trick: upper case and trailing dot
    ("foo.localhost", "foo.localhost", True),  # address trick: RFC 6761, every name below localhost
    ("ⓛⓞⓒⓐⓛⓗⓞⓢⓣ", "localhost", True),  # address trick: circled letters fold to ASCII (NFKC)
    ("Foo.LocalHost...", "foo.localhost", True),  # mixed case, several dots
    ("localhost.example.com", "localhost.example.com", False),  # localhost as a label elsewhere
    ("notlocalhost", "notlocalhost", False),  # suffix without a dot
    ("EXAMPLE.COM", "example.com", False),  # lower-cased
    ("example.com.", "example.com", False),  # trailing dot removed
    ("ｅｘａｍｐｌｅ．ｃｏｍ", "example.com", False),  # full-width letters and dot
    ("ⓔⓧⓐⓜⓟⓛⓔ.com", "example.com", False),  # circled letters
    ("Bücher.de", "xn--bcher-kva.de", False),  # IDNA A-label
    ("straße.de", "xn--strae-oqa.de", False),  # UTS 46 non-transitional: ß is kept, not "strasse"
    ("аррӏе.com", "xn--80ak6aa92e.com", False),  # Cyrillic look-alike of apple.com stays distinct
    ("xn--80ak6aa92e.com", "xn--80ak6aa92e.com", False),  # punycode input stays punycode
    ("XN--80AK6AA92E.COM", "xn--80ak6aa92e.com", False),  # ... lower-cased
    ("a_b.internal", "a_b.internal", False),  # underscore: not IDNA, but dialable
    ("256.1.1.1", "256.1.1.1", False),  # not an address (part > 255): a name, never wrapped to 0.1.1.1
    ("1.2.3.4.5", "1.2.3.4.5", False),  # five parts: a name
    ("08.8.8.8", "08.8.8.8", False),  # 8 is not an octal digit: inet_aton refuses it, so a name
    ("4294967296", "4294967296", False),  # 2**32 does not fit: a name, not 0.0.0.0
    ("1.2.65536", "1.2.65536", False),  # last part too big for 16 bits
]


@pytest.mark.parametrize(("text", "canonical", "localhost"), NAME_VECTORS, ids=[r[0] for r in NAME_VECTORS])
def test_name_vectors(text: str, canonical: str, localhost: bool) -> None:
    host = canonical_host(text)
    assert host == canonical
    assert parse_ip(host) is None, f"{text!r} must stay a host name"
    assert is_localhost_name(host) is localhost


# (address, special range name) for every named range, with boundaries
SPECIAL_RANGES = [
    ("0.0.0.0", "unspecified"),  # 0.0.0.0/32
    ("0.1.2.3", "this-network"),  # 0.0.0.0/8
    ("10.0.0.1", "private"),  # RFC 1918
    ("172.16.0.1", "private"),  # RFC 1918, first
    ("172.31.255.255", "private"),  # RFC 1918, last
    ("172.32.0.1", None),  # just above 172.16.0.0/12
    ("192.168.255.255", "private"),  # RFC 1918
    ("100.64.0.1", "cgnat"),  # RFC 6598 shared address space
    ("100.127.255.255", "cgnat"),  # last of 100.64.0.0/10
    ("100.128.0.0", None),  # first after it
    ("127.255.255.254", "loopback"),  # whole of 127/8
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("192.0.0.8", "ietf-protocol"),  # 192.0.0.0/24
    ("192.0.2.1", "documentation"),  # TEST-NET-1
    ("198.51.100.1", "documentation"),  # TEST-NET-2
    ("203.0.113.255", "documentation"),  # TEST-NET-3
    ("192.88.99.1", "6to4-relay"),  # deprecated 6to4 relay anycast
    ("198.18.0.1", "benchmark"),  # RFC 2544
    ("198.19.255.255", "benchmark"),  # last of 198.18.0.0/15
    ("198.20.0.0", None),  # first after it
    ("224.0.0.1", "multicast"),  # 224/4
    ("239.255.255.250", "multicast"),  # SSDP
    ("240.0.0.1", "reserved"),  # 240/4 (class E)
    ("255.255.255.254", "reserved"),  # still 240/4
    ("255.255.255.255", "broadcast"),  # limited broadcast, named before 240/4
    ("8.8.8.8", None),  # public
    ("81.2.69.142", None),  # public
    ("::", "unspecified"),  # ::/128
    ("::1", "loopback"),  # ::1/128
    ("100::1", "discard"),  # 100::/64
    ("2001:2::1", "benchmark"),  # 2001:2::/48
    ("2001:1::1", "ietf-protocol"),  # 2001::/23, not Teredo
    ("2001:10::1", "orchid"),  # ORCHID
    ("2001:20::1", "orchid"),  # ORCHIDv2
    ("2001:db8::1", "documentation"),  # RFC 3849
    ("3fff::1", "documentation"),  # RFC 9637 3fff::/20
    ("3fff:fff:ffff::1", "documentation"),  # last of 3fff::/20
    ("3fff:1000::1", None),  # first after 3fff::/20: global unicast
    ("5f00::1", "srv6"),  # RFC 9602 SRv6 SIDs
    ("fc00::1", "ula"),  # fc00::/7
    ("fdff:ffff::1", "ula"),  # fd00::/8 is ULA too
    ("fe80::1", "link-local"),  # fe80::/10
    ("febf::1", "link-local"),  # last /16 of fe80::/10
    ("fec0::1", "site-local"),  # deprecated fec0::/10
    ("ff02::1", "multicast"),  # ff00::/8
    ("4000::1", "reserved"),  # outside 2000::/3: not allocated
    ("e000::1", "reserved"),  # outside 2000::/3
    ("2606:4700::1111", None),  # global unicast
    ("2a00:1450::1", None),  # global unicast
]


@pytest.mark.parametrize(("text", "name"), SPECIAL_RANGES, ids=[r[0] for r in SPECIAL_RANGES])
def test_special_ranges(text: str, name: str | None) -> None:
    assert special_range(ip(text)) == name
    addr = classify(ip(text))
    assert addr.embedded_ipv4 is None
    assert addr.special == name


def test_every_named_range_is_covered() -> None:
    """The table above names every range the module knows (so a new range needs a new row)."""
    from geogate.core.addresses import _SPECIAL_V4
    from geogate.core.addresses import _SPECIAL_V6

    known = {name for _net, name in _SPECIAL_V4 + _SPECIAL_V6} | {"reserved"}
    tested = {name for _t, name in SPECIAL_RANGES if name}
    assert known <= tested, f"ranges without a test row: {sorted(known - tested)}"


# (IPv6 address, embedded IPv4, form); Teredo rows check the inversion of the client bits
EMBEDDINGS = [
    ("::ffff:1.2.3.4", "1.2.3.4", "ipv4-mapped"),
    ("::1.2.3.4", "1.2.3.4", "ipv4-compatible"),
    ("::ffff:0:1.2.3.4", "1.2.3.4", "ipv4-translated"),
    ("64:ff9b::1.2.3.4", "1.2.3.4", "nat64"),
    ("64:ff9b:1:ffff::1.2.3.4", None, None),  # 64:ff9b:1::/48 not declared: the layout is unknown
    ("2002:102:304::", "1.2.3.4", "6to4"),  # bits 16-47
    ("2002:102:304:ffff:ffff:ffff:ffff:ffff", "1.2.3.4", "6to4"),  # the rest does not matter
    ("2001:0:4136:e378:8000:63bf:fefd:fcfb", "1.2.3.4", "teredo"),  # ~0x01020304
    ("2001:0:0:0:0:0:ffff:ffff", "0.0.0.0", "teredo"),  # all-ones inverts to 0.0.0.0
    ("2001:0:0:0:0:0:0:0", "255.255.255.255", "teredo"),  # zero inverts to broadcast
    ("::1", None, None),  # loopback, not IPv4-compatible
    ("::", None, None),  # unspecified, not IPv4-compatible
    ("2001:db8::1.2.3.4", None, None),  # documentation prefix carries nothing
    ("2003::102:304", None, None),  # next to 2002::/16: nothing
    ("64:ff9b:2::102:304", None, None),  # outside 64:ff9b:1::/48
]


@pytest.mark.parametrize(("text", "v4", "form"), EMBEDDINGS, ids=[r[0] for r in EMBEDDINGS])
def test_embedded_ipv4(text: str, v4: str | None, form: str | None) -> None:
    got = embedded_ipv4(ip(text))
    assert (None if got is None else (str(got[0]), got[1])) == (None if v4 is None else (v4, form))


def test_teredo_client_decoding_is_ipaddress_compatible() -> None:
    """Our decoding agrees with the standard library's .teredo for the published vector."""
    addr = ip("2001:0:4136:e378:8000:63bf:80ff:fffe")
    server, client = addr.teredo
    assert str(server) == "65.54.227.120"
    assert classify(addr).embedded_ipv4 == client == ip("127.0.0.1")


def test_classify_drops_zone_id() -> None:
    addr = classify(ip("fe80::1%eth0"))
    assert addr.ip == ip("fe80::1")
    assert addr.ip.scope_id is None
    assert addr.text == "fe80::1"
    assert addr.special == "link-local"


def test_transition_form_takes_the_embedded_special_range() -> None:
    """`::ffff:127.0.0.1` is loopback whatever Python's ipaddress says about the IPv6 form."""
    mapped = ip("::ffff:127.0.0.1")
    assert classify(mapped).special == "loopback"
    # the raw IPv6 prefix is outside 2000::/3; the embedded address is what decides
    assert special_range(mapped) == "reserved"


# (input) that is neither an address nor a usable host name
INVALID_HOSTS = [
    "",  # empty
    "   ",  # blanks only
    ".",  # only a dot
    "...",  # only dots
    "exa mple.com",  # space inside
    "foo/bar",  # path character
    "*.example.com",  # wildcard is a policy pattern, not a host
    "ab\x00c",  # NUL byte
    "[::1",  # unbalanced bracket
    "[::zz]",  # bracketed but not an address
    "user@example.com",  # userinfo
    "http://example.com",  # a URL, not a host
    "example.com:443",  # host:port must go through split_host_port first
]


@pytest.mark.parametrize("text", INVALID_HOSTS, ids=[repr(t) for t in INVALID_HOSTS])
def test_invalid_hosts_raise(text: str) -> None:
    with pytest.raises(AddressError) as err:
        canonical_host(text)
    assert isinstance(err.value, ValueError)  # callers may catch ValueError
    assert "\n" not in str(err.value)


# (input, parse_ip result or None)
PARSE_IP = [
    ("[::1]", "::1"),  # brackets
    ("fe80::1%25en0", "fe80::1"),  # URL-encoded zone id
    ("0x7f.1", "127.0.0.1"),  # lax IPv4
    ("127.0.0.1.", "127.0.0.1"),  # trailing dot
    ("1..2", None),  # empty part
    ("1.2.3.", "1.2.0.3"),  # trailing dot dropped, then the 3-part form: 1.2.(16-bit 3)
    ("0xg", None),  # bad hex
    ("09", None),  # bad octal
    ("-1", None),  # sign
    ("1.2.3.256", None),  # part too big
    ("example.com", None),  # name
    ("", None),  # empty
    ("::g", None),  # bad IPv6
]


@pytest.mark.parametrize(("text", "expected"), PARSE_IP, ids=[repr(r[0]) for r in PARSE_IP])
def test_parse_ip(text: str, expected: str | None) -> None:
    got = parse_ip(text)
    assert (str(got) if got is not None else None) == expected


# (target, default port, expected (host, port))
SPLIT_OK = [
    ("[::1]:8443", None, ("::1", 8443)),  # bracketed IPv6 with port
    ("[::1]", None, ("::1", None)),  # bracketed, no port
    ("[::1]", 443, ("::1", 443)),  # ... the default port applies
    ("::1", None, ("::1", None)),  # bare IPv6: colons are not a port
    ("2001:db8::1", 80, ("2001:db8::1", 80)),  # bare IPv6 with default
    ("[fe80::1%25eth0]:80", None, ("fe80::1%25eth0", 80)),  # zone id kept for canonical_host to drop
    ("example.com:80", None, ("example.com", 80)),  # host:port
    ("example.com", None, ("example.com", None)),  # host only
    ("example.com", 443, ("example.com", 443)),  # host only, default port
    ("1.2.3.4:65535", None, ("1.2.3.4", 65535)),  # highest port
    ("1.2.3.4:1", None, ("1.2.3.4", 1)),  # lowest port
    ("  example.com:443  ", None, ("example.com", 443)),  # blanks around
]


@pytest.mark.parametrize(("target", "default", "expected"), SPLIT_OK, ids=[r[0] for r in SPLIT_OK])
def test_split_host_port(target: str, default: int | None, expected: tuple[str, int | None]) -> None:
    assert split_host_port(target, default) == expected


SPLIT_BAD = [
    "example.com:0",  # port 0
    "example.com:65536",  # too big
    "foo:99999",  # much too big
    "example.com:",  # empty port
    "example.com:http",  # service name
    "example.com:-1",  # sign
    "example.com: 80",  # blank inside
    "[::1]:0",  # bracketed, port 0
    "[::1]:",  # bracketed, empty port
    "[::1]x",  # junk after ]
    "[::1]80",  # missing colon
    "[::1",  # missing ]
    "foo:²",  # superscript two: isdigit() but not a number int() reads
    "foo:٤٤٣",  # Arabic-Indic digits: not an ASCII port
]


@pytest.mark.parametrize("target", SPLIT_BAD)
def test_split_host_port_rejects(target: str) -> None:
    with pytest.raises(AddressError) as err:
        split_host_port(target)
    assert "\n" not in str(err.value)
    assert repr(target.strip()) in str(err.value)  # the message quotes what was given


# -- the integer classification against the ipaddress-based one it replaced ----------------------

def _reference_tables():
    from geogate.core.addresses import _SPECIAL_V4
    from geogate.core.addresses import _SPECIAL_V6

    return {v: [(ipaddress.ip_network(n), name) for n, name in table] for v, table in ((4, _SPECIAL_V4), (6, _SPECIAL_V6))}


_REF_SPECIAL = _reference_tables()
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")


def _reference_special(addr) -> str | None:
    """special_range as it was: a scan of the table with `in network`, then 2000::/3."""
    for net, name in _REF_SPECIAL[addr.version]:
        if addr in net:
            return name
    if addr.version == 6 and addr not in _GLOBAL_UNICAST:
        return "reserved"
    return None


_FORMS = [("::ffff:0:0/96", "ipv4-mapped"), ("::ffff:0:0:0/96", "ipv4-translated"), ("::/96", "ipv4-compatible"),
          ("64:ff9b::/96", "nat64"), ("64:ff9b:1::/48", "nat64-local"), ("2002::/16", "6to4"), ("2001::/32", "teredo")]
_REF_FORMS = [(ipaddress.ip_network(n), form) for n, form in _FORMS]


def _reference_embedded(addr):
    """embedded_ipv4 as it was: `in network` per transition form."""
    for net, form in _REF_FORMS:
        if addr in net:
            if form == "ipv4-compatible" and int(addr) <= 1:
                continue
            if form == "6to4":
                return ipaddress.IPv4Address((int(addr) >> 80) & 0xFFFFFFFF), form
            if form == "teredo":
                return ipaddress.IPv4Address(~int(addr) & 0xFFFFFFFF), form
            if form == "nat64-local":
                return None  # no layout declared: carries nothing
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF), form
    return None


def _reference_classify(addr) -> Address:
    if addr.version == 6:
        addr = ipaddress.IPv6Address(int(addr))  # zone id dropped
        if addr in _REF_FORMS[4][0]:
            return Address(addr, None, None, "nat64-local-undeclared", "64:ff9b:1::/48")
        carried = _reference_embedded(addr)
        if carried is not None:
            prefix = "64:ff9b::/96" if carried[1] == "nat64" else None
            return Address(addr, carried[0], carried[1], _reference_special(carried[0]), prefix)
    return Address(addr, None, None, _reference_special(addr))


def _boundary_addresses() -> list:
    """Both ends of every named range and transition form, and the addresses just outside."""
    from geogate.core.addresses import _SPECIAL_V4
    from geogate.core.addresses import _SPECIAL_V6

    nets = [n for n, _ in _SPECIAL_V4 + _SPECIAL_V6] + [n for n, _ in _FORMS] + ["2000::/3", "4000::/2", "8000::/1"]
    out = []
    for text in nets:
        net = ipaddress.ip_network(text)
        top = (1 << net.max_prefixlen) - 1
        first, last = int(net.network_address), int(net.broadcast_address)
        for value in (first - 1, first, first + 1, last - 1, last, last + 1):
            if 0 <= value <= top:
                out.append(ipaddress.ip_address(value) if net.version == 4 else ipaddress.IPv6Address(value))
    return out


def _carriers() -> list:
    """Every transition form carrying each IPv4 boundary address (so the embedded range decides)."""
    import random

    rng = random.Random(11)
    v4s = [a for a in _boundary_addresses() if a.version == 4] + [ip("8.8.8.8"), ip("1.2.3.4")]
    out = []
    for v4 in v4s:
        x = int(v4)
        out += [
            ipaddress.IPv6Address(0xFFFF << 32 | x),  # mapped
            ipaddress.IPv6Address(0xFFFF << 48 | x),  # translated
            ipaddress.IPv6Address(x),  # compatible (:: and ::1 are not)
            ipaddress.IPv6Address(0x64FF9B << 96 | x),  # NAT64
            ipaddress.IPv6Address(0x64FF9B0001 << 80 | rng.getrandbits(48) << 32 | x),  # NAT64 local-use
            ipaddress.IPv6Address(0x2002 << 112 | x << 80 | rng.getrandbits(80)),  # 6to4
            ipaddress.IPv6Address(0x20010000 << 96 | rng.getrandbits(64) << 32 | (~x & 0xFFFFFFFF)),  # Teredo
        ]
    return out


def _random_addresses(n: int = 20000) -> list:
    import random

    rng = random.Random(5)
    out = [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(n)]
    out += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(n // 2)]
    # most of the IPv6 space is reserved: aim at the prefixes that are not
    for prefix, bits in ((0x2, 4), (0x3FFF, 16), (0x2001, 16), (0x0, 96), (0x64FF9B, 24), (0x5F00, 16), (0xFE, 8)):
        shift = 128 - bits
        out += [ipaddress.IPv6Address(prefix << shift | rng.getrandbits(shift)) for _ in range(n // 10)]
    return out


CLASSIFY_SAMPLE = _boundary_addresses() + _carriers() + _random_addresses()


def test_classification_matches_the_ipaddress_based_reference() -> None:
    """special_range, embedded_ipv4 and classify (integer tables) agree with `ip in network` for
    every range boundary, every transition form around them, and random addresses."""
    assert len(CLASSIFY_SAMPLE) > 30000
    mismatches = []
    for addr in CLASSIFY_SAMPLE:
        got = (special_range(addr), embedded_ipv4(addr) if addr.version == 6 else None, classify(addr))
        want = (_reference_special(addr), _reference_embedded(addr) if addr.version == 6 else None, _reference_classify(addr))
        if got != want:
            mismatches.append((str(addr), got, want))
    assert not mismatches, mismatches[:5]
    # the sample is not vacuous: every range name and every form occurs
    names = {classify(a).special for a in CLASSIFY_SAMPLE}
    assert names >= {name for _t, name in SPECIAL_RANGES if name} | {None, "nat64-local-undeclared"}
    assert {classify(a).embedding for a in CLASSIFY_SAMPLE} == {None} | {form for _n, form in _FORMS} - {"nat64-local"}


def test_classify_of_a_scoped_address_equals_the_unscoped_one() -> None:
    for text in ("fe80::1%eth0", "::ffff:127.0.0.1%2", "2002:7f00:1::%x", "2606:4700::1%lo"):
        scoped = ip(text)
        assert classify(scoped) == _reference_classify(scoped) == classify(ip(text.split("%")[0]))


def test_ip_key_is_the_integer_with_the_family_apart() -> None:
    """ip_key reads ipaddress internals for speed: it must agree with the public int() and .version."""
    from geogate.core.addresses import ip_key

    for addr in CLASSIFY_SAMPLE[:5000] + _carriers():
        assert ip_key(addr) == int(addr) + (1 << 128 if addr.version == 6 else 0)
    assert ip_key(ip("1.2.3.4")) != ip_key(ip("::1.2.3.4"))
    assert ip_key(ip("fe80::1%eth0")) == ip_key(ip("fe80::1"))  # the zone id is not part of the key
