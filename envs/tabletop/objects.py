"""Small specs of the tabletop's objects, each able to write its own MJCF body.

Every object is one free body (a `freejoint`) made of simple geoms, so that a scene's state is just
`qpos` and the renderer draws boxes and cylinders only. Sizes are in metres; an object's frame sits at
the centre of its bounding box, so resting on the table means `z = half_height`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Named colours (RGBA) the instructions can speak of; distinct enough at 128x128 pixels.
COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.12, 1.0),
    "green": (0.15, 0.70, 0.20, 1.0),
    "blue": (0.15, 0.30, 0.90, 1.0),
    "yellow": (0.95, 0.85, 0.10, 1.0),
    "orange": (1.00, 0.50, 0.05, 1.0),
    "purple": (0.55, 0.20, 0.75, 1.0),
    "white": (0.95, 0.95, 0.95, 1.0),
    "cyan": (0.10, 0.80, 0.85, 1.0),
    "pink": (1.00, 0.50, 0.75, 1.0),
    "brown": (0.50, 0.30, 0.12, 1.0),
    "black": (0.12, 0.12, 0.12, 1.0),
    "grey": (0.60, 0.60, 0.62, 1.0),
    "wood": (0.72, 0.55, 0.35, 1.0),
}

# Graspable objects: friction high enough for a two-finger grip, torsional friction so they do not spin.
_OBJECT_FRICTION = "1.0 0.01 0.0005"
# Cylinders also get rolling friction (condim 6): knocked over, they would otherwise roll off the table.
_CYLINDER_FRICTION = "1.0 0.01 0.002"


def _rgba(color: str) -> str:
    return " ".join(f"{c:g}" for c in COLORS[color])


@dataclass(frozen=True)
class ObjectSpec:
    """Base of all objects. `name` is the MJCF body name, `color` a key of COLORS."""

    name: str
    color: str

    kind = "object"
    graspable = True

    @property
    def half_height(self) -> float:
        raise NotImplementedError

    @property
    def footprint_radius(self) -> float:
        """Radius of a circle holding the object's footprint (for placement with separation)."""
        raise NotImplementedError

    @property
    def yaw_symmetry(self) -> float:
        """Angle (rad) under which the object looks the same: pi/2 for a square box, 0 for round."""
        return 0.0

    @property
    def noun(self) -> str:
        return self.kind

    @property
    def label(self) -> str:
        """How instructions name it, e.g. 'red cube'."""
        return f"{self.color} {self.noun}"

    def geoms_xml(self) -> str:
        raise NotImplementedError

    def body_xml(self) -> str:
        # The body starts far below the table; reset places it from the init state.
        return (
            f'<body name="{self.name}" pos="0 0 -1">'
            f'<freejoint name="{self.name}_joint"/>{self.geoms_xml()}</body>'
        )


@dataclass(frozen=True)
class Box(ObjectSpec):
    """A cube (equal sides) or a tall block. `half` = half extents (x, y, z)."""

    half: tuple[float, float, float] = (0.02, 0.02, 0.02)
    mass: float = 0.05

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "cube" if self.half[0] == self.half[1] == self.half[2] else "block"

    @property
    def half_height(self) -> float:
        return self.half[2]

    @property
    def footprint_radius(self) -> float:
        return math.hypot(self.half[0], self.half[1])

    @property
    def yaw_symmetry(self) -> float:
        return math.pi / 2 if self.half[0] == self.half[1] else math.pi

    @property
    def grasp_width(self) -> float:
        return 2 * min(self.half[0], self.half[1])

    def geoms_xml(self) -> str:
        hx, hy, hz = self.half
        return (
            f'<geom name="{self.name}_geom" type="box" size="{hx} {hy} {hz}" mass="{self.mass}" '
            f'rgba="{_rgba(self.color)}" friction="{_OBJECT_FRICTION}" condim="4"/>'
        )


@dataclass(frozen=True)
class Cylinder(ObjectSpec):
    """An upright cylinder (a can)."""

    radius: float = 0.02
    half_length: float = 0.03
    mass: float = 0.05

    kind = "cylinder"

    @property
    def half_height(self) -> float:
        return self.half_length

    @property
    def footprint_radius(self) -> float:
        return self.radius

    @property
    def grasp_width(self) -> float:
        return 2 * self.radius

    def geoms_xml(self) -> str:
        return (
            f'<geom name="{self.name}_geom" type="cylinder" size="{self.radius} {self.half_length}" '
            f'mass="{self.mass}" rgba="{_rgba(self.color)}" friction="{_CYLINDER_FRICTION}" condim="6"/>'
        )


@dataclass(frozen=True)
class Plate(ObjectSpec):
    """A flat disc things are put on."""

    radius: float = 0.075
    half_thickness: float = 0.006
    mass: float = 0.2

    kind = "plate"
    graspable = False

    @property
    def half_height(self) -> float:
        return self.half_thickness

    @property
    def footprint_radius(self) -> float:
        return self.radius

    @property
    def top_height(self) -> float:
        """Height of the upper surface above the body frame."""
        return self.half_thickness

    @property
    def support_radius(self) -> float:
        """Horizontal distance from the centre within which an object counts as on the plate."""
        return self.radius - 0.015

    def geoms_xml(self) -> str:
        return (
            f'<geom name="{self.name}_geom" type="cylinder" size="{self.radius} {self.half_thickness}" '
            f'mass="{self.mass}" rgba="{_rgba(self.color)}" friction="1 0.01 0.001"/>'
        )


@dataclass(frozen=True)
class Container(ObjectSpec):
    """An open container: a floor and upright walls, round (bowl) or square (basket).

    `inner` is the inner radius (bowl) or inner half-side (basket); `wall_height` the wall height
    above the floor's top.
    """

    shape: str = "bowl"  # "bowl" | "basket"
    inner: float = 0.062
    wall_height: float = 0.045
    wall_thickness: float = 0.006
    floor_thickness: float = 0.008
    mass: float = 0.4

    graspable = False

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.shape

    @property
    def half_height(self) -> float:
        return (self.floor_thickness + self.wall_height) / 2

    @property
    def outer(self) -> float:
        return self.inner + self.wall_thickness

    @property
    def footprint_radius(self) -> float:
        return self.outer * (math.sqrt(2) if self.shape == "basket" else 1.0)

    @property
    def floor_top(self) -> float:
        """Height of the floor's top surface relative to the body frame (the bounding box centre)."""
        return -self.half_height + self.floor_thickness

    @property
    def rim_height(self) -> float:
        """Height of the walls' top relative to the body frame."""
        return self.half_height

    def geoms_xml(self) -> str:
        rgba = _rgba(self.color)
        h = self.half_height
        ft, wt, wh = self.floor_thickness, self.wall_thickness, self.wall_height
        wall_z = -h + ft + wh / 2
        parts = []
        if self.shape == "bowl":
            parts.append(
                f'<geom name="{self.name}_floor" type="cylinder" size="{self.outer} {ft / 2}" '
                f'pos="0 0 {-h + ft / 2}" mass="{self.mass / 2}" rgba="{rgba}"/>'
            )
            n = 12  # wall segments around the ring
            r = self.inner + wt / 2
            tangential = math.pi * r / n * 1.08  # half length, slight overlap closes the ring
            for k in range(n):
                a = 2 * math.pi * k / n
                parts.append(
                    f'<geom name="{self.name}_wall{k}" type="box" size="{wt / 2} {tangential} {wh / 2}" '
                    f'pos="{r * math.cos(a):.5f} {r * math.sin(a):.5f} {wall_z}" euler="0 0 {a:.5f}" '
                    f'mass="{self.mass / (2 * n):.5f}" rgba="{rgba}"/>'
                )
        else:
            s = self.outer
            parts.append(
                f'<geom name="{self.name}_floor" type="box" size="{s} {s} {ft / 2}" pos="0 0 {-h + ft / 2}" '
                f'mass="{self.mass / 2}" rgba="{rgba}"/>'
            )
            c = self.inner + wt / 2
            for k, (x, y, sx, sy) in enumerate(
                [(c, 0, wt / 2, s), (-c, 0, wt / 2, s), (0, c, s, wt / 2), (0, -c, s, wt / 2)]
            ):
                parts.append(
                    f'<geom name="{self.name}_wall{k}" type="box" size="{sx} {sy} {wh / 2}" '
                    f'pos="{x} {y} {wall_z}" mass="{self.mass / 8}" rgba="{rgba}"/>'
                )
        return "".join(parts)


@dataclass(frozen=True)
class Zone:
    """A flat coloured patch on the table (visual only, no collision): a target region for pushing."""

    name: str
    color: str
    half: tuple[float, float] = (0.06, 0.06)

    @property
    def label(self) -> str:
        return f"{self.color} zone"

    def body_xml(self) -> str:
        # A mocap body so that reset can move it without it being part of qpos.
        hx, hy = self.half
        return (
            f'<body name="{self.name}" mocap="true" pos="0 0 0">'
            f'<geom name="{self.name}_geom" type="box" size="{hx} {hy} 0.0005" pos="0 0 0.0005" '
            f'rgba="{_rgba(self.color)}" contype="0" conaffinity="0"/></body>'
        )


def cube(name: str, color: str, half: float = 0.02) -> Box:
    return Box(name=name, color=color, half=(half, half, half))


def block(name: str, color: str) -> Box:
    return Box(name=name, color=color, half=(0.017, 0.017, 0.032), mass=0.06)


def cylinder(name: str, color: str) -> Cylinder:
    return Cylinder(name=name, color=color)


def bowl(name: str = "bowl", color: str = "white") -> Container:
    return Container(name=name, color=color, shape="bowl")


def basket(name: str = "basket", color: str = "wood") -> Container:
    return Container(name=name, color=color, shape="basket", inner=0.075, wall_height=0.06, mass=0.6)


def plate(name: str = "plate", color: str = "grey") -> Plate:
    return Plate(name=name, color=color)


@dataclass(frozen=True)
class Drawer:
    """A cabinet (fixed during an episode, placed by reset) with one drawer sliding out towards +x
    (the camera) and a bar handle standing off its front. The cabinet is a mocap body so that init
    states can move it; the drawer is its child on a slide joint with friction, so it stays where it
    is pulled to."""

    name: str = "drawer"
    color: str = "wood"
    half: tuple[float, float, float] = (0.08, 0.11, 0.04)  # cabinet outer half extents
    travel: float = 0.14  # the drawer's slide range (m)
    handle_standoff: float = 0.045  # bar centre in front of the drawer's front face

    kind = "drawer"
    label = "drawer"

    @property
    def joint(self) -> str:
        return f"{self.name}_slide"

    @property
    def handle_site(self) -> str:
        return f"{self.name}_handle"

    @property
    def drawer_body(self) -> str:
        return f"{self.name}_tray"

    @property
    def cabinet_body(self) -> str:
        return f"{self.name}_cabinet"

    def body_xml(self) -> str:
        hx, hy, hz = self.half
        t = 0.008  # wall thickness
        rgba = _rgba(self.color)
        dark = "0.45 0.33 0.22 1"
        walls = [  # (name, half sizes, position) relative to the cabinet centre
            ("top", (hx, hy, t / 2), (0, 0, hz - t / 2)),
            ("bottom", (hx, hy, t / 2), (0, 0, -hz + t / 2)),
            ("back", (t / 2, hy, hz), (-hx + t / 2, 0, 0)),
            ("left", (hx, t / 2, hz), (0, -hy + t / 2, 0)),
            ("right", (hx, t / 2, hz), (0, hy - t / 2, 0)),
        ]
        cabinet = "".join(
            f'<geom name="{self.name}_{n}" type="box" size="{s[0]} {s[1]} {s[2]}" pos="{p[0]} {p[1]} {p[2]}" '
            f'rgba="{rgba}"/>'
            for n, s, p in walls
        )
        iy = hy - t - 0.002  # drawer half width inside the side walls
        ih = hz - t - 0.004  # drawer front half height inside top and bottom
        front_x = hx - 0.006
        bar_x = hx + self.handle_standoff
        post_half = (self.handle_standoff - 0.008) / 2
        tray = [
            ("front", (0.006, iy, ih), (front_x, 0, 0), dark),
            ("floor", (hx - 0.012, iy, 0.004), (0, 0, -ih + 0.004), dark),
            ("rear", (0.004, iy, ih * 0.6), (-hx + 0.016, 0, -ih * 0.4), dark),
            ("side0", (hx - 0.012, 0.004, ih * 0.6), (0, -iy + 0.004, -ih * 0.4), dark),
            ("side1", (hx - 0.012, 0.004, ih * 0.6), (0, iy - 0.004, -ih * 0.4), dark),
            ("post0", (post_half, 0.006, 0.006), (hx + post_half, -0.04, 0), "0.7 0.7 0.72 1"),
            ("post1", (post_half, 0.006, 0.006), (hx + post_half, 0.04, 0), "0.7 0.7 0.72 1"),
            ("bar", (0.008, 0.06, 0.008), (bar_x, 0, 0), "0.7 0.7 0.72 1"),
        ]
        drawer = "".join(
            f'<geom name="{self.name}_{n}" type="box" size="{s[0]} {s[1]} {s[2]}" pos="{p[0]} {p[1]} {p[2]}" '
            f'rgba="{c}" mass="0.05"/>'
            for n, s, p, c in tray
        )
        return (
            f'<body name="{self.cabinet_body}" mocap="true" pos="0 0 {hz}">{cabinet}'
            f'<body name="{self.drawer_body}" pos="0 0 0">'
            f'<joint name="{self.joint}" type="slide" axis="1 0 0" range="0 {self.travel}" damping="3" '
            f'frictionloss="0.3"/>{drawer}'
            f'<site name="{self.handle_site}" pos="{bar_x} 0 0" size="0.005" rgba="0 0 0 0" group="3"/>'
            f"</body></body>"
        )
