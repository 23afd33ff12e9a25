"""The one MJCF builder of the tabletop: table, floating parallel-jaw gripper, objects, cameras.

World frame: the table top is the plane z = 0, x points towards the `agentview` camera (the "front"
of the table), y to the camera's right. The gripper is a free body (gravity-compensated) held by a
weld constraint to a mocap target that the controller moves; a real body rather than a kinematic one
so that it has velocities and contact friction acts on what it touches. It carries two slide-joint
fingers that position actuators drive; objects are held by friction only, never welded. The end-effector point (`eef` site) lies between the fingertips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from vla_accel.envs.tabletop.objects import Drawer, ObjectSpec, Zone

# Table top extent (half sizes, metres) and the box the end-effector point is kept in.
TABLE_HALF = (0.40, 0.50)
WORKSPACE_LOW = np.array([-0.35, -0.45, 0.017])
WORKSPACE_HIGH = np.array([0.35, 0.45, 0.35])

# Gripper geometry (metres): finger travel per finger, finger pad half sizes, eef height above tips.
FINGER_OPEN = 0.04  # each finger's joint range is [0, FINGER_OPEN]; 2 * 0.04 = 8 cm opening
FINGER_HALF = (0.010, 0.006, 0.030)  # x (depth), y (thickness), z (length)
EEF_ABOVE_TIPS = 0.015
GRIPPER_HOME = np.array([-0.12, 0.0, 0.25])

# Physics: 5 ms steps, implicit-fast integration (stable with stiff finger actuators at this step).
PHYSICS_TIMESTEP = 0.005


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ObjectSpec, ...]
    zones: tuple[Zone, ...] = ()
    drawers: tuple[Drawer, ...] = ()


def _gripper_xml() -> str:
    fx, fy, fz = FINGER_HALF
    finger_z = fz - EEF_ABOVE_TIPS  # finger geom centre relative to the eef point
    palm_z = finger_z + fz + 0.012
    pad = 'friction="1.5 0.02 0.001" condim="4" solref="0.004 1"'
    return f"""
    <body name="gripper_target" mocap="true" pos="{GRIPPER_HOME[0]} {GRIPPER_HOME[1]} {GRIPPER_HOME[2]}"/>
    <body name="gripper" pos="{GRIPPER_HOME[0]} {GRIPPER_HOME[1]} {GRIPPER_HOME[2]}" gravcomp="1">
      <freejoint name="gripper_joint"/>
      <site name="eef" pos="0 0 0" size="0.004" rgba="1 0 0 0" group="3"/>
      <geom name="palm" type="box" size="0.018 0.058 0.012" pos="0 0 {palm_z}" rgba="0.25 0.25 0.28 1"
            mass="0.3"/>
      <geom name="wrist" type="cylinder" size="0.02 0.03" pos="0 0 {palm_z + 0.04}" rgba="0.35 0.35 0.38 1"
            contype="0" conaffinity="0" mass="0.1"/>
      <camera name="wrist" pos="0.075 0 {palm_z + 0.03}" xyaxes="0 1 0 -0.8 0 0.6" fovy="75"/>
      <body name="finger_left" pos="0 0 0" gravcomp="1">
        <joint name="finger_left_joint" type="slide" axis="0 1 0" range="0 {FINGER_OPEN}" damping="8"
               armature="0.01"/>
        <geom name="finger_left_geom" type="box" size="{fx} {fy} {fz}" pos="0 {fy} {finger_z}" mass="0.05"
              rgba="0.8 0.8 0.82 1" {pad}/>
      </body>
      <body name="finger_right" pos="0 0 0" gravcomp="1">
        <joint name="finger_right_joint" type="slide" axis="0 -1 0" range="0 {FINGER_OPEN}" damping="8"
               armature="0.01"/>
        <geom name="finger_right_geom" type="box" size="{fx} {fy} {fz}" pos="0 {-fy} {finger_z}" mass="0.05"
              rgba="0.8 0.8 0.82 1" {pad}/>
      </body>
    </body>"""


# The scene's physics options and rendering settings (the same for every task).
_PHYSICS_AND_VISUAL = f"""  <compiler angle="radian" autolimits="true"/>
  <option timestep="{PHYSICS_TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="5">
    <!-- several contact points between convex shapes (cube on plate, cube on cube): they rest still -->
    <flag multiccd="enable"/>
  </option>
  <visual>
    <quality shadowsize="0" offsamples="0" numslices="16" numstacks="4" numquads="1"/>
    <global offwidth="640" offheight="640"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
    <map znear="0.01"/>
  </visual>
  <default>
    <geom solref="0.005 1"/>
  </default>
"""


def build_scene_xml(spec: SceneSpec) -> str:
    """MJCF text of the whole scene for one task (its objects and zones)."""
    tx, ty = TABLE_HALF
    bodies = "".join(o.body_xml() for o in spec.objects)
    zones = "".join(z.body_xml() for z in spec.zones)
    drawers = "".join(d.body_xml() for d in spec.drawers)
    # A mocap parent and its jointed child are not filtered as parent and child: exclude explicitly.
    drawer_excludes = "".join(
        f'<exclude body1="{d.cabinet_body}" body2="{d.drawer_body}"/>' for d in spec.drawers
    )
    return f"""
<mujoco model="vla_accel_tabletop">
{_PHYSICS_AND_VISUAL}  <worldbody>
    <light name="sun" directional="true" pos="0 0 2" dir="0.3 0.2 -1" diffuse="0.5 0.5 0.5"
           specular="0 0 0" castshadow="false"/>
    <geom name="floor" type="box" size="2 2 0.01" pos="0 0 -0.76" rgba="0.30 0.30 0.33 1" contype="0"
          conaffinity="0"/>
    <!-- The table collides as a plane (analytic, several contacts: flat things rest still on it) kept
         in the hidden geom group 3, and shows as a box (a plane is drawn as a fine grid: slow). -->
    <geom name="table" type="plane" size="{tx} {ty} 1" rgba="0.55 0.42 0.30 1" friction="0.8 0.01 0.001"
          group="3"/>
    <geom name="table_top" type="box" size="{tx} {ty} 0.03" pos="0 0 -0.0302" rgba="0.55 0.42 0.30 1"
          contype="0" conaffinity="0"/>
    <geom name="table_leg" type="box" size="{tx - 0.05} {ty - 0.05} 0.36" pos="0 0 -0.42"
          rgba="0.40 0.30 0.22 1" contype="0" conaffinity="0"/>
    <camera name="agentview" pos="0.40 0 0.80" xyaxes="0 1 0 -0.87 0 0.49" fovy="47"/>
    {_gripper_xml()}
    {zones}
    {drawers}
    {bodies}
  </worldbody>
  <contact>
    <exclude body1="finger_left" body2="finger_right"/>
    <exclude body1="gripper" body2="finger_left"/>
    <exclude body1="gripper" body2="finger_right"/>
    {drawer_excludes}
  </contact>
  <equality>
    <weld name="gripper_weld" body1="gripper_target" body2="gripper" solref="0.01 1" solimp="0.95 0.99 0.001"/>
  </equality>
  <actuator>
    <position name="finger_left_act" joint="finger_left_joint" kp="300" ctrlrange="0 {FINGER_OPEN}"
              forcerange="-12 12"/>
    <position name="finger_right_act" joint="finger_right_joint" kp="300" ctrlrange="0 {FINGER_OPEN}"
              forcerange="-12 12"/>
  </actuator>
</mujoco>
"""
