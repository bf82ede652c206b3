"""The metadata a hyperspectral cube carries besides its pixels, in one model every format reads into and writes from.

:class:`CubeMetadata` holds the spectral description (band centres, FWHM, their unit, band names), the georeference
(:class:`GeoReference`: CRS and GDAL-style geotransform), the nodata value, a description and the other keys of the
input (ENVI header keys, HDF5 / MAT attributes) passed through as text. A super-resolved output keeps all of it except
the pixel size, which :meth:`CubeMetadata.for_output` divides by the scale (the upper-left corner stays where it was).

ENVI's ``map info`` is parsed here (:func:`parse_map_info` / :func:`format_map_info`) because the ENVI reader and
writer and the GeoTIFF bridge all need the same conversion: ``{projection, ref x, ref y, easting, northing, size x,
size y, [zone, hemisphere,] datum, units=..., rotation=...}`` with 1-based reference pixels whose (1, 1) is the outer
upper-left corner of the image (the convention GDAL's ENVI driver uses).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sschsr_deploy.errors import InputValidationError

log = logging.getLogger(__name__)

__all__ = [
    "ATTRIBUTE_NAMES",
    "VARIABLE_NAMES",
    "ENVI_LAYOUT_KEYS",
    "WAVELENGTH_UNITS",
    "CubeMetadata",
    "GeoReference",
    "MapInfo",
    "attributes_from_metadata",
    "envi_fields",
    "format_map_info",
    "metadata_from_attributes",
    "metadata_from_envi",
    "metadata_from_variables",
    "parse_envi_list",
    "parse_map_info",
    "to_nanometres",
    "variables_from_metadata",
]

#: Accepted wavelength units and their factor to nanometres (ENVI ``wavelength units`` spellings included).
WAVELENGTH_UNITS: dict[str, float] = {
    "nm": 1.0, "nanometers": 1.0, "nanometres": 1.0, "nanometer": 1.0,
    "um": 1000.0, "µm": 1000.0, "micrometers": 1000.0, "micrometres": 1000.0, "micrometer": 1000.0, "microns": 1000.0,
    "mm": 1e6, "millimeters": 1e6,
    "cm-1": math.nan, "wavenumber": math.nan,  # recognised, not convertible by a factor
    "ghz": math.nan, "mhz": math.nan, "index": math.nan, "unknown": math.nan,
}

GeoTransform = tuple[float, float, float, float, float, float]


def to_nanometres(values: Sequence[float], units: str | None) -> tuple[float, ...]:
    """Band centres (or widths) in nanometres. ``units`` None: guessed from the values (< 100 → micrometres)."""
    vals = tuple(float(v) for v in values)
    if units is None:
        factor = 1000.0 if vals and max(vals) < 100.0 else 1.0
    else:
        key = units.strip().lower()
        if key not in WAVELENGTH_UNITS:
            raise InputValidationError(
                f"unknown wavelength unit {units!r}; expected one of nm, um (micrometers), mm")
        factor = WAVELENGTH_UNITS[key]
        if math.isnan(factor):
            raise InputValidationError(f"wavelength unit {units!r} cannot be converted to nanometres")
    return tuple(v * factor for v in vals)


@dataclass(frozen=True)
class GeoReference:
    """Where the pixels are: ``crs`` (WKT, ``EPSG:n`` or a PROJ string, as the source gave it) and a GDAL geotransform
    ``(x0, dx, rx, y0, ry, dy)``: pixel (col, row)'s outer corner is at x = x0 + col·dx + row·rx,
    y = y0 + col·ry + row·dy (dy negative for north-up images)."""

    crs: str | None
    transform: GeoTransform

    def __post_init__(self) -> None:
        t = tuple(float(v) for v in self.transform)
        if len(t) != 6 or not all(math.isfinite(v) for v in t):
            raise InputValidationError(f"a geotransform has six finite numbers; got {self.transform!r}")
        if t[1] * t[5] - t[2] * t[4] == 0:
            raise InputValidationError(f"degenerate geotransform {t} (zero pixel area)")
        object.__setattr__(self, "transform", t)

    @property
    def pixel_size(self) -> tuple[float, float]:
        x0, dx, rx, y0, ry, dy = self.transform
        return math.hypot(dx, ry), math.hypot(rx, dy)

    def scaled(self, scale: int) -> GeoReference:
        """The georeference of the image ``scale`` times finer over the same area: pixel size / scale, corner kept."""
        if scale < 1:
            raise ValueError(f"scale must be >= 1; got {scale}")
        x0, dx, rx, y0, ry, dy = self.transform
        return GeoReference(self.crs, (x0, dx / scale, rx / scale, y0, ry / scale, dy / scale))


@dataclass(frozen=True)
class MapInfo:
    """ENVI ``map info``, parsed: projection name, 1-based reference pixel, its map coordinates, pixel size, the
    projection's zone / hemisphere (UTM), datum, units and rotation (degrees)."""

    projection: str
    ref_x: float
    ref_y: float
    easting: float
    northing: float
    size_x: float
    size_y: float
    zone: int | None = None
    hemisphere: str | None = None
    datum: str | None = None
    units: str | None = None
    rotation: float = 0.0

    def geotransform(self) -> GeoTransform:
        """The GDAL geotransform of this map info, computed as GDAL's ENVI driver does (so that rasterio and this
        package agree): rotation (degrees) turns the pixel axes; the reference-pixel offset uses the unrotated sizes."""
        c, s = math.cos(math.radians(self.rotation)), math.sin(math.radians(self.rotation))
        x0 = self.easting - (self.ref_x - 1.0) * self.size_x
        y0 = self.northing + (self.ref_y - 1.0) * self.size_y
        return (x0, c * self.size_x, s * self.size_x, y0, s * self.size_y, -c * self.size_y)

    def scaled(self, scale: int) -> MapInfo:
        """The map info of the ``scale`` times finer image: the same map point at the same (finer) pixel corner."""
        return dataclasses.replace(
            self, ref_x=1.0 + (self.ref_x - 1.0) * scale, ref_y=1.0 + (self.ref_y - 1.0) * scale,
            size_x=self.size_x / scale, size_y=self.size_y / scale,
        )


def parse_envi_list(value: str) -> list[str]:
    """Items of an ENVI brace list ``{a, b, c}`` (braces optional), stripped; empty items kept out."""
    text = value.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    return [item.strip() for item in text.split(",") if item.strip()]


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise InputValidationError(f"map info: {what} {text!r} is not a number") from exc
    if not math.isfinite(value):
        raise InputValidationError(f"map info: {what} is {text!r}")
    return value


def parse_map_info(value: str) -> MapInfo:
    """Parse an ENVI ``map info`` value; raises :class:`InputValidationError` naming what cannot be read."""
    items = parse_envi_list(value)
    keyed = {k.strip().lower(): v.strip() for k, _, v in (i.partition("=") for i in items if "=" in i)}
    plain = [i for i in items if "=" not in i]
    if len(plain) < 7:
        raise InputValidationError(
            f"map info needs at least 7 items (projection, reference pixel x / y, easting, northing, pixel sizes); "
            f"got {value!r}")
    proj = plain[0]
    ref_x, ref_y, east, north, sx, sy = (
        _number(t, w) for t, w in zip(plain[1:7], ("reference x", "reference y", "easting", "northing",
                                                    "pixel size x", "pixel size y"), strict=True))
    if sx <= 0 or sy <= 0:
        raise InputValidationError(f"map info: pixel size must be positive; got {sx} x {sy}")
    rest = plain[7:]
    zone = hemisphere = datum = None
    if proj.strip().upper() == "UTM" and len(rest) >= 2:
        try:
            zone = int(float(rest[0]))
        except ValueError as exc:
            raise InputValidationError(f"map info: UTM zone {rest[0]!r} is not a number") from exc
        hemisphere = rest[1]
        if hemisphere.lower() not in ("north", "south"):
            raise InputValidationError(f"map info: UTM hemisphere must be North or South; got {hemisphere!r}")
        rest = rest[2:]
    if rest:
        datum = rest[0]
    rotation = _number(keyed["rotation"], "rotation") if "rotation" in keyed else 0.0
    return MapInfo(proj, ref_x, ref_y, east, north, sx, sy, zone, hemisphere, datum, keyed.get("units"), rotation)


def _fmt(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else f"{float(v):.1f}"


def format_map_info(info: MapInfo) -> str:
    """The ENVI header value of ``info`` (round-trips through :func:`parse_map_info`)."""
    parts = [info.projection, _fmt(info.ref_x), _fmt(info.ref_y), _fmt(info.easting), _fmt(info.northing),
             _fmt(info.size_x), _fmt(info.size_y)]
    if info.zone is not None:
        parts += [str(info.zone), info.hemisphere or "North"]
    if info.datum:
        parts.append(info.datum)
    if info.units:
        parts.append(f"units={info.units}")
    if info.rotation:
        parts.append(f"rotation={_fmt(info.rotation)}")
    return "{" + ", ".join(parts) + "}"


@dataclass
class CubeMetadata:
    """What a cube says about itself; every field optional. ``extra``: other keys of the source (ENVI header keys,
    HDF5 / MAT attributes) as text, written back where the output format can hold them. ``map_info``: the ENVI
    form of the georeference when the source had one (kept so that an ENVI output writes it back unchanged but
    scaled)."""

    wavelengths: tuple[float, ...] | None = None
    fwhm: tuple[float, ...] | None = None
    wavelength_units: str | None = None
    band_names: tuple[str, ...] | None = None
    geo: GeoReference | None = None
    map_info: MapInfo | None = None
    nodata: float | None = None
    description: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def check(self, bands: int, source: str = "cube") -> CubeMetadata:
        """Refuse lists whose length is not the band count (a clear error instead of a wrong band mapping)."""
        for name in ("wavelengths", "fwhm", "band_names"):
            values = getattr(self, name)
            if values is not None and len(values) != bands:
                raise InputValidationError(
                    f"{source}: {len(values)} {name.replace('_', ' ')} for {bands} bands; the metadata does not "
                    "describe this cube (fix the header or drop the key)")
        if self.wavelengths is not None:
            to_nanometres(self.wavelengths, self.wavelength_units)  # the unit is readable
            if not all(math.isfinite(v) for v in self.wavelengths):
                raise InputValidationError(f"{source}: wavelengths must be finite numbers")
        if self.nodata is not None and math.isinf(self.nodata):
            raise InputValidationError(f"{source}: nodata value {self.nodata} is infinite")
        return self

    def validated(self, bands: int, source: str = "cube") -> CubeMetadata:
        """A copy fit for a cube of ``bands`` bands, for readers: where :meth:`check` would refuse a field (a list
        whose length is not the band count, non-finite band centres, a unit that does not convert to nanometres, an
        infinite nodata), a warning naming ``source``, the key and the counts, and that field dropped. An input file
        with a stale header should still be processed (the band-count rule then applies); never raises."""
        out = dataclasses.replace(self, extra=dict(self.extra))

        def drop(name: str, why: str) -> None:
            log.warning("%s: ignoring the %s: %s", source, name.replace("_", " "), why)
            setattr(out, name, None)

        for name in ("wavelengths", "fwhm", "band_names"):
            values = getattr(out, name)
            if values is not None and len(values) != bands:
                drop(name, f"{len(values)} values for {bands} bands")
        for name in ("wavelengths", "fwhm"):
            values = getattr(out, name)
            if values is not None and not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                drop(name, "not all values are finite numbers")
        if out.wavelengths is not None or out.fwhm is not None:
            try:
                to_nanometres(out.wavelengths or out.fwhm or (), out.wavelength_units)
            except InputValidationError as exc:
                for name in ("wavelengths", "fwhm"):
                    if getattr(out, name) is not None:
                        drop(name, str(exc))
                out.wavelength_units = None
        if out.nodata is not None and not (isinstance(out.nodata, int | float) and not math.isinf(out.nodata)):
            drop("nodata", f"value {out.nodata!r} is not a finite number or NaN")
        return out

    @property
    def wavelengths_nm(self) -> tuple[float, ...] | None:
        return None if self.wavelengths is None else to_nanometres(self.wavelengths, self.wavelength_units)

    @property
    def fwhm_nm(self) -> tuple[float, ...] | None:
        return None if self.fwhm is None else to_nanometres(self.fwhm, self.wavelength_units)

    def for_output(self, scale: int, band_indices: Sequence[int] | None = None,
                   wavelengths_nm: Sequence[float] | None = None) -> CubeMetadata:
        """The metadata of the super-resolved cube: georeference at 1 / ``scale`` the pixel size. ``band_indices``:
        the input bands the output's bands correspond to (spectral lists re-indexed); ``wavelengths_nm``: the
        output's own band centres when they are not input bands (resampled to the model's bands), in nm."""
        out = dataclasses.replace(self, extra=dict(self.extra))
        out.geo = None if self.geo is None else self.geo.scaled(scale)
        out.map_info = None if self.map_info is None else self.map_info.scaled(scale)
        if wavelengths_nm is not None:
            out.wavelengths, out.wavelength_units = tuple(float(v) for v in wavelengths_nm), "Nanometers"
            out.fwhm = out.band_names = None
        elif band_indices is not None:
            idx = [int(i) for i in band_indices]

            def pick(values: tuple | None) -> tuple | None:
                return None if values is None else tuple(values[i] for i in idx)

            out.wavelengths, out.fwhm, out.band_names = pick(self.wavelengths), pick(self.fwhm), pick(self.band_names)
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (for sidecars); ``None`` fields left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or value == {}:
                continue
            if isinstance(value, GeoReference | MapInfo):
                value = dataclasses.asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CubeMetadata:
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name == "geo":
                value = GeoReference(value.get("crs"), tuple(value["transform"]))
            elif f.name == "map_info":
                value = MapInfo(**value)
            elif isinstance(value, list):
                value = tuple(value)
            kw[f.name] = value
        return cls(**kw)


# ---------------------------------------------------------------------------------------------------------------------
# ENVI headers and HDF5 / MAT attributes

#: ENVI keys that describe the file's layout: written by the ENVI writer itself, never passed through.
ENVI_LAYOUT_KEYS = frozenset({
    "samples", "lines", "bands", "header offset", "file type", "data type", "interleave", "byte order",
    "x start", "y start",
})
_ENVI_META_KEYS = frozenset({
    "wavelength", "fwhm", "wavelength units", "band names", "map info", "coordinate system string",
    "data ignore value", "description",
})


def _envi_floats(value: str, key: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in parse_envi_list(value))
    except ValueError:
        raise InputValidationError(f"ENVI header: {key} must be a list of numbers; got {value[:80]!r}") from None


def metadata_from_envi(fields: Mapping[str, str], source: str = "ENVI header") -> CubeMetadata:
    """The metadata in a parsed ENVI header (lower-case keys → raw values); layout keys are ignored, keys this model
    does not know are kept in ``extra``. ``map info`` becomes the georeference (CRS from ``coordinate system
    string`` when present, else ``UTM zone / hemisphere`` as an EPSG code for WGS-84)."""
    meta = CubeMetadata()
    if "wavelength" in fields:
        meta.wavelengths = _envi_floats(fields["wavelength"], "wavelength")
    if "fwhm" in fields:
        meta.fwhm = _envi_floats(fields["fwhm"], "fwhm")
    if fields.get("wavelength units"):
        meta.wavelength_units = fields["wavelength units"].strip()
    if "band names" in fields:
        meta.band_names = tuple(parse_envi_list(fields["band names"]))
    if "data ignore value" in fields:
        try:
            meta.nodata = float(fields["data ignore value"])
        except ValueError:
            raise InputValidationError(
                f"{source}: data ignore value {fields['data ignore value']!r} is not a number") from None
    if "description" in fields:
        meta.description = fields["description"].strip().strip("{}").strip()
    if "map info" in fields:
        info = parse_map_info(fields["map info"])
        crs = fields.get("coordinate system string", "").strip().strip("{}").strip() or _utm_epsg(info)
        meta.map_info = info
        meta.geo = GeoReference(crs, info.geotransform())
    meta.extra = {k: v for k, v in fields.items() if k not in ENVI_LAYOUT_KEYS | _ENVI_META_KEYS}
    return meta


def _utm_epsg(info: MapInfo) -> str | None:
    if info.projection.upper() != "UTM" or info.zone is None or not 1 <= info.zone <= 60:
        return None
    if (info.datum or "WGS-84").replace("_", "-").upper() not in ("WGS-84", "WGS84"):
        return None
    return f"EPSG:{(32600 if (info.hemisphere or 'North').lower() == 'north' else 32700) + info.zone}"


def _utm_zone(crs: str | None) -> int:
    """+zone for EPSG:326zz (WGS-84 / UTM north), -zone for EPSG:327zz (south), 0 otherwise."""
    if not crs or not crs.upper().startswith("EPSG:"):
        return 0
    try:
        code = int(crs.split(":", 1)[1])
    except ValueError:
        return 0
    if 32601 <= code <= 32660:
        return code - 32600
    if 32701 <= code <= 32760:
        return -(code - 32700)
    return 0


def _crs_wkt(crs: str) -> str | None:
    """WKT for the ``coordinate system string``: the CRS itself when it is WKT, else converted by rasterio when
    installed (an ``EPSG:n`` code without rasterio is left out; the map info still carries UTM zones)."""
    if crs.lstrip().upper().startswith(("PROJCS", "GEOGCS", "PROJCRS", "GEOGCRS", "COMPD")):
        return crs
    try:
        from rasterio.crs import CRS
    except ImportError:
        return None
    try:
        return CRS.from_user_input(crs).to_wkt()
    except Exception:  # noqa: BLE001 - rasterio raises CRSError subclasses; an unknown CRS is only not written
        return None


def _envi_list(values: Sequence[Any]) -> str:
    return "{" + ", ".join(str(v) for v in values) + "}"


def envi_fields(meta: CubeMetadata) -> dict[str, str]:
    """ENVI header keys for ``meta`` (besides the layout keys the writer adds): spectral lists, map info (the
    source's own, scaled, or one made from the geotransform), the CRS as ``coordinate system string``, nodata as
    ``data ignore value``, description and the passed-through keys."""
    out: dict[str, str] = {}
    if meta.description:
        out["description"] = "{" + meta.description.replace("}", ")") + "}"
    if meta.wavelengths is not None:
        out["wavelength units"] = meta.wavelength_units or "Nanometers"
        out["wavelength"] = _envi_list(repr(float(v)) for v in meta.wavelengths)
    if meta.fwhm is not None:
        out["fwhm"] = _envi_list(repr(float(v)) for v in meta.fwhm)
    if meta.band_names is not None:
        out["band names"] = _envi_list(str(n).replace(",", ";") for n in meta.band_names)
    if meta.nodata is not None:
        out["data ignore value"] = repr(float(meta.nodata))
    info = meta.map_info
    crs = meta.geo.crs if meta.geo is not None else None
    if info is None and meta.geo is not None:
        x0, dx, rx, y0, ry, dy = meta.geo.transform
        if rx == 0 and ry == 0 and dx > 0 and dy < 0:  # north-up: expressible without a rotation
            zone = _utm_zone(crs)
            info = (MapInfo("UTM", 1.0, 1.0, x0, y0, dx, -dy, abs(zone), "North" if zone > 0 else "South", "WGS-84",
                            "Meters") if zone else MapInfo("Arbitrary", 1.0, 1.0, x0, y0, dx, -dy))
    if info is not None:
        out["map info"] = format_map_info(info)
    wkt = _crs_wkt(crs) if crs and not (info is not None and _utm_epsg(info) == crs) else None
    if wkt:
        out["coordinate system string"] = "{" + wkt + "}"
    for k, v in meta.extra.items():
        if k not in ENVI_LAYOUT_KEYS and k not in out:
            out[k] = v
    return out


#: HDF5 / MAT attribute names read as metadata (first found wins); written with the first name.
ATTRIBUTE_NAMES: dict[str, tuple[str, ...]] = {
    "wavelengths": ("wavelength", "wavelengths", "bands_nm", "band_centers", "centers"),
    "fwhm": ("fwhm", "bandwidths"),
    "wavelength_units": ("wavelength_units", "wavelength units", "units"),
    "band_names": ("band_names", "band names"),
    "nodata": ("nodata", "_FillValue", "data_ignore_value", "fill_value"),
    "crs": ("crs", "spatial_ref", "crs_wkt"),
    "transform": ("geotransform", "transform", "GeoTransform"),
    "description": ("description",),
}


def metadata_from_attributes(attrs: Mapping[str, Any], source: str = "attributes") -> CubeMetadata:
    """Metadata from HDF5 / MAT attributes (names in :data:`ATTRIBUTE_NAMES`); other scalar / string attributes
    are kept in ``extra``. Values that cannot be read as the field they name are a clear error."""

    def get(field_name: str) -> Any:
        for name in ATTRIBUTE_NAMES[field_name]:
            if name in attrs:
                return attrs[name]
        return None

    def text(v: Any) -> str:
        if isinstance(v, bytes):
            return v.decode("utf-8", "replace")
        if hasattr(v, "tolist") and not isinstance(v, str):
            v = v.tolist()
            if isinstance(v, list) and len(v) == 1:
                v = v[0]
            if isinstance(v, bytes):
                return v.decode("utf-8", "replace")
        return str(v)

    def floats(v: Any, what: str) -> tuple[float, ...]:
        try:
            arr = [float(x) for x in (v.ravel().tolist() if hasattr(v, "ravel") else list(v))]
        except (TypeError, ValueError):
            raise InputValidationError(f"{source}: {what} must be numbers") from None
        return tuple(arr)

    meta = CubeMetadata()
    if (v := get("wavelengths")) is not None:
        meta.wavelengths = floats(v, "wavelengths")
    if (v := get("fwhm")) is not None:
        meta.fwhm = floats(v, "fwhm")
    if (v := get("wavelength_units")) is not None:
        meta.wavelength_units = text(v)
    if (v := get("band_names")) is not None:
        meta.band_names = tuple(text(x) for x in (v.ravel().tolist() if hasattr(v, "ravel") else v))
    if (v := get("nodata")) is not None:
        vals = floats([v] if isinstance(v, int | float) else v, "nodata")
        if len(vals) != 1:
            raise InputValidationError(f"{source}: nodata must be one number")
        meta.nodata = vals[0]
    if (v := get("description")) is not None:
        meta.description = text(v)
    transform = get("transform")
    if transform is not None:
        t = floats(transform, "geotransform")
        if len(t) != 6:
            raise InputValidationError(f"{source}: a geotransform has 6 numbers; got {len(t)}")
        crs = get("crs")
        meta.geo = GeoReference(None if crs is None else text(crs), t)  # type: ignore[arg-type]
    known = {n for names in ATTRIBUTE_NAMES.values() for n in names}
    for k, v in attrs.items():
        if k in known or k.startswith("MATLAB_"):
            continue
        if isinstance(v, str | bytes | int | float) or (hasattr(v, "size") and getattr(v, "size", 2) == 1):
            meta.extra[k] = text(v)
    return meta


def attributes_from_metadata(meta: CubeMetadata) -> dict[str, Any]:
    """HDF5 / MAT attributes for ``meta`` (numbers as float64 arrays, text as str)."""
    import numpy as np

    out: dict[str, Any] = {}
    if meta.wavelengths is not None:
        out["wavelength"] = np.asarray(meta.wavelengths, dtype=np.float64)
        out["wavelength_units"] = meta.wavelength_units or "Nanometers"
    if meta.fwhm is not None:
        out["fwhm"] = np.asarray(meta.fwhm, dtype=np.float64)
    if meta.band_names is not None:
        out["band_names"] = [str(n) for n in meta.band_names]
    if meta.nodata is not None:
        out["nodata"] = float(meta.nodata)
    if meta.description:
        out["description"] = meta.description
    if meta.geo is not None:
        out["geotransform"] = np.asarray(meta.geo.transform, dtype=np.float64)
        if meta.geo.crs:
            out["crs"] = meta.geo.crs
    for k, v in meta.extra.items():
        out.setdefault(k, v)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# loose variables (.npz members, MATLAB v5 variables): the fields a file holds as arrays of their own

_NUMERIC_FIELDS = ("wavelengths", "fwhm", "nodata", "transform")
_TEXT_FIELDS = ("crs", "description", "wavelength_units")
#: variable names read as metadata from .npz / MAT v5 files (vectors, scalars and text named as the attributes)
VARIABLE_NAMES = frozenset(n for f in (*_NUMERIC_FIELDS, *_TEXT_FIELDS, "band_names") for n in ATTRIBUTE_NAMES[f])


def _as_text(value: Any) -> str | None:
    import numpy as np

    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, np.ndarray) and value.dtype.kind == "U" and value.size == 1:
        return str(value.reshape(-1)[0])
    return None


def metadata_from_variables(values: Mapping[str, Any], source: str = "variables") -> CubeMetadata:
    """Metadata from variables stored beside the cube (.npz members, MATLAB v5 variables), named as in
    :data:`ATTRIBUTE_NAMES`: numeric arrays for band centres / widths / nodata / geotransform, text (``str`` or a
    one-element string array) for crs / description / unit, a list or 1-D string array for band names. Variables
    of another kind, or that do not read as their field, are left out with a warning: they are guesses by name, and
    the cube does not depend on them. Never raises."""
    import numpy as np

    attrs: dict[str, Any] = {}
    for name, value in values.items():
        field_name = next((f for f, names in ATTRIBUTE_NAMES.items() if name in names), None)
        if field_name in _NUMERIC_FIELDS:
            arr = np.asarray(value) if not isinstance(value, str) else None
            if arr is None or arr.dtype.kind not in "biuf" or arr.size == 0:
                log.warning("%s: ignoring the variable %r: not numeric", source, name)
                continue
            attrs[name] = arr.astype(np.float64).reshape(-1)
        elif field_name in _TEXT_FIELDS:
            text = _as_text(value)
            if text is None:
                log.warning("%s: ignoring the variable %r: not text", source, name)
                continue
            attrs[name] = text
        elif field_name == "band_names":
            items = [value] if isinstance(value, str) else list(np.asarray(value, dtype=object).reshape(-1))
            if not all(isinstance(v, str) for v in items):
                log.warning("%s: ignoring the variable %r: not a list of text", source, name)
                continue
            attrs[name] = items
    try:
        return metadata_from_attributes(attrs, source)
    except InputValidationError as exc:
        log.warning("%s: ignoring its metadata variables: %s", source, exc)
        return CubeMetadata()


def variables_from_metadata(meta: CubeMetadata) -> dict[str, Any]:
    """The variables :func:`metadata_from_variables` reads back: float64 arrays (a 0-d one for nodata), ``str`` for
    text, ``list[str]`` for band names (the caller stores it as its format's list of text). Passed-through keys
    (``extra``) are not included: loose variables of those names would be taken for the file's own data."""
    out = attributes_from_metadata(dataclasses.replace(meta, extra={}))
    if "nodata" in out:
        import numpy as np

        out["nodata"] = np.float64(out["nodata"])
    return out
