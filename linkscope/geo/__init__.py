"""Offline geo and ASN for every hop, and the geometry of the path (how far it wandered).

Plain-data API (no probe types needed)::

    geo = GeoLookup.discover(geoip_dir=None, city_db=None, asn_db=None, config=None)
    info = geo.lookup("200.147.67.142")        # GeoInfo(country="BR", city=..., asn=...)
    geo.sources, geo.attribution, geo.warnings, geo.describe()
    shape = path_geometry([GeoPoint(lat, lon, "Beijing"), ...], measured_rtt_ms=350.0)
    shape.detour_ratio, shape.floor_rtt_ms, shape.inflation, shape.phrase()

Nothing here talks to the network: every lookup is a local MMDB read.
"""

from linkscope.geo.geometry import (
    BACKTRACK_KM,
    GeoPoint,
    PathGeometry,
    Segment,
    great_circle_km,
    path_geometry,
    rtt_floor_ms,
)
from linkscope.geo.lookup import (
    DBIP_ATTRIBUTION,
    GeoInfo,
    GeoLookup,
    GeoSource,
    classify,
    config_path,
    describe_sources,
)
from linkscope.geo.scope import BadAddress, address_scope, normalise_address

__all__ = [
    "BACKTRACK_KM",
    "DBIP_ATTRIBUTION",
    "BadAddress",
    "GeoInfo",
    "GeoLookup",
    "GeoPoint",
    "GeoSource",
    "PathGeometry",
    "Segment",
    "address_scope",
    "classify",
    "config_path",
    "describe_sources",
    "great_circle_km",
    "normalise_address",
    "path_geometry",
    "rtt_floor_ms",
]
