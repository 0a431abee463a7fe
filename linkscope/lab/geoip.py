"""The lab's GeoIP databases: every lab address maps to its node's city and AS records."""

from __future__ import annotations

from pathlib import Path

from linkscope.lab.addressing import Addressing
from linkscope.lab.topology import Topology

CITY_DB = "lab-city.mmdb"
ASN_DB = "lab-asn.mmdb"
# geoip2.database.Reader.asn() insists on "GeoLite2-ASN" in the type; DB-IP uses the same tag
ASN_DATABASE_TYPE = "linkscope-lab-ASN (compat=GeoLite2-ASN)"

_COUNTRY_NAMES = {
    "AR": "Argentina",
    "AU": "Australia",
    "BR": "Brazil",
    "CA": "Canada",
    "CL": "Chile",
    "CN": "China",
    "DE": "Germany",
    "FR": "France",
    "GB": "United Kingdom",
    "HK": "Hong Kong",
    "IN": "India",
    "JP": "Japan",
    "KR": "South Korea",
    "MX": "Mexico",
    "NL": "Netherlands",
    "SG": "Singapore",
    "US": "United States",
    "ZA": "South Africa",
}


def write_geoip(topo: Topology, addressing: Addressing, directory: Path) -> tuple[Path, Path]:
    """Write ``lab-city.mmdb`` and ``lab-asn.mmdb`` into ``directory``; return their paths."""
    from mmdb_writer import MmdbF64, MmdbU32, MMDBWriter
    from netaddr import IPSet

    directory.mkdir(parents=True, exist_ok=True)
    city = MMDBWriter(
        ip_version=4,
        database_type="linkscope-lab-City",
        languages=["en"],
        description="linkscope lab: node locations",
    )
    asn = MMDBWriter(
        ip_version=4,
        database_type=ASN_DATABASE_TYPE,
        languages=["en"],
        description="linkscope lab: node autonomous systems",
    )
    for node in topo.nodes:
        nets = IPSet([f"{a}/32" for a in addressing.all_addresses(node.name)])
        rec: dict[str, object] = {}
        if node.city:
            rec["city"] = {"names": {"en": node.city}}
        if node.country:
            rec["country"] = {
                "iso_code": node.country,
                "names": {"en": _COUNTRY_NAMES.get(node.country, node.country)},
            }
        if node.lat is not None and node.lon is not None:
            rec["location"] = {"latitude": MmdbF64(node.lat), "longitude": MmdbF64(node.lon)}
        if rec:
            city.insert_network(nets, rec)
        if node.asn is not None:
            asn.insert_network(
                nets,
                {
                    "autonomous_system_number": MmdbU32(node.asn),
                    "autonomous_system_organization": node.org or "",
                },
            )
    city_path, asn_path = directory / CITY_DB, directory / ASN_DB
    city.to_db_file(str(city_path))
    asn.to_db_file(str(asn_path))
    return city_path, asn_path


__all__ = ["ASN_DB", "CITY_DB", "write_geoip"]
