# Drives Blender's interface (run under Xvfb, not -b) for tests/addon.rs:
#   blender --factory-startup SCENE.blend --python gui.py -- CONFIG.json
# Installs the add-on zip, enables it, sets its preferences, makes unsaved
# changes, presses Submit through the operator (so its modal timer and
# thread really run) once per attempt of CONFIG, and writes what Blender
# showed to CONFIG's "result": the panel's status, the reports read back
# from the Info editor, and the longest pause of a timer ticking meanwhile.
# Everything is driven from application timers: the interface stays live.
import json
import sys
import time
import traceback

import bpy

config = json.load(open(sys.argv[sys.argv.index("--") + 1], encoding="utf-8"))
result = {"attempts": [], "error": None, "screenshots": []}
ticks = []
MODULE = "renderfarm_addon"


def ticker():
    ticks.append(time.monotonic())
    return 0.05


def window_and_areas():
    window = bpy.context.window_manager.windows[0]
    areas = sorted(window.screen.areas, key=lambda a: a.width * a.height, reverse=True)
    return window, areas


def region_of(area):
    return next(r for r in area.regions if r.type == "WINDOW")


def info_reports(window, info):
    """Every report the Info editor shows, then clears it."""
    with bpy.context.temp_override(window=window, area=info, region=region_of(info)):
        bpy.context.window_manager.clipboard = ""
        bpy.ops.info.select_all(action="SELECT")
        bpy.ops.info.report_copy()
        text = bpy.context.window_manager.clipboard
        bpy.ops.info.report_delete()
    return text


def screenshot(window, area, path):
    with bpy.context.temp_override(window=window, area=area, region=region_of(area)):
        # The add-on's panel comes after the engine's own ones.
        for _ in range(6):
            bpy.ops.view2d.scroll_down(page=True)
    yield 0.5
    with bpy.context.temp_override(window=window, area=area, region=region_of(area)):
        bpy.ops.screen.screenshot_area(filepath=path)
    result["screenshots"].append(path)


def steps():
    window, areas = window_and_areas()
    # The biggest area (the 3D viewport) shows Render Properties, the next
    # (the timeline) the Info editor whose reports are read back.
    props, info = areas[0], areas[1]
    props.type = "PROPERTIES"
    info.type = "INFO"
    yield 0.5  # the areas' new spaces exist once drawn
    props.spaces.active.context = "RENDER"

    bpy.ops.preferences.addon_install(filepath=config["zip"], overwrite=True)
    bpy.ops.preferences.addon_enable(module=MODULE)
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.mode = config.get("mode", "UPLOAD")

    scene = bpy.context.scene
    for name, value in config.get("scene", {}).items():
        setattr(scene, name, value)
    if "output" in config:
        scene.render.filepath = config["output"]
    if "camera_offset" in config:
        camera = scene.camera
        for axis, delta in enumerate(config["camera_offset"]):
            camera.location[axis] += delta
    scene.renderfarm.chunk_size = config.get("chunk_size", 10)
    scene.renderfarm.priority = config.get("priority", "normal")
    yield 1.0  # let the panel draw once
    info_reports(window, info)

    for attempt in config["attempts"]:
        prefs.broker_url = attempt["broker_url"]
        prefs.token = attempt["token"]
        prefs.timeout = attempt.get("timeout", 30.0)
        prefs.ca_file = attempt.get("ca_file", "")
        saved = {}
        for name, value in attempt.get("scene", {}).items():
            saved[name] = getattr(scene, name)
            setattr(scene, name, value)
        # The add-on's own settings of the scene (its panel's fields).
        saved_settings = {}
        for name, value in attempt.get("renderfarm", {}).items():
            saved_settings[name] = getattr(scene.renderfarm, name)
            setattr(scene.renderfarm, name, value)
        if attempt.get("movie"):
            saved_format = scene.render.image_settings.file_format
            scene.render.image_settings.file_format = "FFMPEG"
        started = time.monotonic()
        first_tick = len(ticks)
        with bpy.context.temp_override(window=window, area=props, region=region_of(props)):
            raised = None
            try:
                returned = bpy.ops.renderfarm.submit("INVOKE_DEFAULT")
            except RuntimeError as e:
                # An operator called from Python that ends at once with an
                # error report hands the report to its caller as this
                # exception, instead of to the Info editor (a click on the
                # button shows it there).
                returned, raised = {"CANCELLED"}, str(e)
        wm = bpy.context.window_manager
        while not (wm.renderfarm_status.startswith("Submitted") or wm.renderfarm_status.startswith("Not submitted")):
            if time.monotonic() - started > attempt.get("limit", 120):
                raise RuntimeError("the submission did not end within its limit: " + wm.renderfarm_status)
            yield 0.1
        ended = time.monotonic()
        yield 0.5  # the modal operator's last report reaches the Info editor
        during = [t for t in ticks[first_tick:] if t <= ended]
        stamps = [started] + during + [ended]
        longest = max(b - a for a, b in zip(stamps, stamps[1:]))
        watched = []
        if attempt.get("watch") and wm.renderfarm_status.startswith("Submitted"):
            # The add-on's own list of recent renders, refreshed while the
            # panel is on screen, follows the render to its end.
            addon = sys.modules[MODULE]
            render_id = wm.renderfarm_status.split()[2]
            while True:
                with addon._recent.lock:
                    mine = [r for r in addon._recent.renders if r["id"] == render_id]
                if mine:
                    seen = [mine[0]["status"], mine[0]["progress"]["frames_done"]]
                    if not watched or watched[-1] != seen:
                        watched.append(seen)
                    if seen[0] in ("completed", "failed", "canceled"):
                        break
                if time.monotonic() - ended > attempt["watch"]:
                    raise RuntimeError("the recent renders never showed the render end: %r" % watched)
                yield 0.25
            # A preview the broker serves for the finished render is loaded
            # within a refresh or two.
            for _ in range(40):
                if any(key.startswith(render_id) for key in addon._previews.keys()):
                    break
                yield 0.25
        if attempt.get("screenshot"):
            yield float(attempt.get("screenshot_after", 1.0))
            yield from screenshot(window, props, attempt["screenshot"])
        result["attempts"].append(
            {
                "returned": sorted(returned),
                "status": wm.renderfarm_status,
                "reports": info_reports(window, info),
                "raised": raised,
                "watched": watched,
                "previews": sorted(sys.modules[MODULE]._previews.keys()) if MODULE in sys.modules else [],
                "seconds": ended - started,
                "ticks": len(during),
                "longest_pause": longest,
            }
        )
        for name, value in saved.items():
            setattr(scene, name, value)
        for name, value in saved_settings.items():
            setattr(scene.renderfarm, name, value)
        if attempt.get("movie"):
            scene.render.image_settings.file_format = saved_format
    result["dirty"] = bpy.data.is_dirty


def run():
    plan = steps()

    def step():
        try:
            return next(plan)
        except StopIteration:
            pass
        except Exception:
            result["error"] = traceback.format_exc()
        with open(config["result"], "w", encoding="utf-8") as f:
            json.dump(result, f)
        bpy.ops.wm.quit_blender()
        return None

    bpy.app.timers.register(ticker, first_interval=0.05)
    bpy.app.timers.register(step, first_interval=1.0)


run()
