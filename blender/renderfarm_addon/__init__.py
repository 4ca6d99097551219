# Submits the open scene to a renderfarm broker from Blender's Render
# Properties, and lists the artist's recent renders with their previews.
#
# Blender's interface thread never waits on the network: a submission and
# the list's refresh run on threads (jobs.py), and a modal operator's timer
# (submission) or an application timer (list) brings their results back.
# Installs as a legacy add-on (bl_info, Blender 3.4+) and as an extension
# (blender_manifest.toml, Blender 4.2+) from the same zip:
# `renderfarm addon --out renderfarm.zip`.

bl_info = {
    "name": "Render Farm",
    "author": "renderfarm",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "Properties > Render > Render Farm",
    "description": "Submit the scene to a renderfarm broker and follow your renders",
    "category": "Render",
}

import datetime
import os
import shutil
import tempfile

import bpy
import bpy.utils.previews
from bpy.props import EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from .broker import Broker, BrokerError
from .jobs import Recent, SubmitJob

PACK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pack.py")

# The submission in flight (one at a time), the recent renders and the
# images of their previews.
_job = None
_recent = None
_previews = None
_seen_generation = -1


def preferences(context=None):
    return (context or bpy.context).preferences.addons[__package__].preferences


def broker_from(prefs):
    """The broker the preferences name; BrokerError says what to fix."""
    if not getattr(bpy.app, "online_access", True):
        # Blender 4.2+: the artist turned network access off for add-ons.
        raise BrokerError(
            "Blender's online access is off; allow it in Preferences > System > Network "
            "to reach the render farm's broker"
        )
    return Broker(prefs.broker_url, prefs.token, bpy.path.abspath(prefs.ca_file), prefs.timeout)


class RenderfarmPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    broker_url: StringProperty(
        name="Broker URL",
        description="The broker's address, as the command line's --broker (e.g. http://farm:8080)",
        default="http://127.0.0.1:8080",
    )
    token: StringProperty(
        name="Token",
        description="Your artist token (renderfarm token create NAME --role artist)",
        subtype="PASSWORD",
    )
    ca_file: StringProperty(
        name="Private CA File",
        description="PEM certificate of the authority that signed an https:// broker's certificate, "
        "trusted on top of the system's",
        subtype="FILE_PATH",
    )
    mode: EnumProperty(
        name="Files",
        description="How the workers get the .blend file",
        items=[
            (
                "UPLOAD",
                "Upload",
                "Pack a self-contained copy and send it through the broker; frames come back through it",
            ),
            (
                "SHARED",
                "Shared Drive",
                "Save the copy on a drive the workers share and submit its path",
            ),
        ],
        default="UPLOAD",
    )
    shared_folder: StringProperty(
        name="Shared Folder",
        description="Shared-drive mode: where the submitted copies are saved, as the workers see it "
        "(default: a renderfarm folder beside your .blend file)",
        subtype="DIR_PATH",
    )
    timeout: FloatProperty(
        name="Timeout",
        description="Seconds to wait for the broker's answer to one request",
        default=30.0,
        min=1.0,
        max=600.0,
    )

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "broker_url")
        layout.prop(self, "token")
        layout.prop(self, "ca_file")
        layout.prop(self, "mode", expand=True)
        if self.mode == "SHARED":
            layout.prop(self, "shared_folder")
        layout.prop(self, "timeout")


class RenderfarmSceneSettings(bpy.types.PropertyGroup):
    name: StringProperty(name="Name", description="Shown in listings (default: the file's name)")
    priority: EnumProperty(
        name="Priority",
        items=[
            ("low", "Low", "Waits for everything else"),
            ("normal", "Normal", ""),
            ("high", "High", "May preempt lower work after two minutes"),
            ("urgent", "Urgent", "Preempts lower work at once"),
        ],
        default="normal",
    )
    chunk_mode: EnumProperty(
        name="Chunks",
        items=[
            ("FRAMES", "Frames", "A fixed number of frames per task"),
            ("AUTO", "Auto", "The farm sizes the tasks from measured frame times, to take about the target time each"),
        ],
        default="FRAMES",
    )
    chunk_size: IntProperty(name="Chunk Size", description="Frames per task", default=10, min=1, max=1000000)
    target_chunk_seconds: IntProperty(
        name="Target Seconds",
        description="Seconds a task should take when the farm sizes them: long enough to pay off a start, "
        "short enough for urgent work and failed machines to be dealt with soon",
        default=60,
        min=5,
        max=3600,
    )
    tags: StringProperty(name="Tags", description="Tags a worker needs to take this render, comma-separated")


def movie_refusal(scene):
    """Why the scene cannot be submitted as it is, or None."""
    if scene.render.is_movie_format:
        return (
            "the output format is a movie (%s): the farm renders chunks of frames on "
            "several machines, each writing images; choose an image format (PNG, OpenEXR, "
            "...) in Output Properties" % scene.render.image_settings.file_format
        )
    return None


def tag_redraw(context=None):
    wm = (context or bpy.context).window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "PROPERTIES":
                area.tag_redraw()


def blend_stem():
    if bpy.data.filepath:
        return os.path.splitext(os.path.basename(bpy.data.filepath))[0]
    return "untitled"


class RENDERFARM_OT_submit(bpy.types.Operator):
    """Save a copy of the scene as it is now (unsaved changes included; your file stays as it is) and submit it"""

    bl_idname = "renderfarm.submit"
    bl_label = "Submit to Render Farm"

    _timer = None

    @classmethod
    def poll(cls, context):
        if _job is not None:
            cls.poll_message_set("a submission is under way")
            return False
        return context.scene is not None

    def execute(self, context):
        global _job
        scene = context.scene
        prefs = preferences(context)
        settings = scene.renderfarm
        wm = context.window_manager
        refusal = movie_refusal(scene)
        if refusal:
            return self.fail(context, refusal)
        try:
            broker = broker_from(prefs)
        except BrokerError as e:
            return self.fail(context, str(e))

        output = scene.render.filepath.strip()
        if output:
            output = bpy.path.abspath(output)
            if not os.path.isabs(output):
                return self.fail(
                    context,
                    "the output %r is relative to a file that was never saved; save the file, "
                    "or give an absolute output path" % scene.render.filepath,
                )
        spec = {
            "name": settings.name.strip() or blend_stem(),
            "frame_start": scene.frame_start,
            "frame_end": scene.frame_end,
            "chunk_size": "auto" if settings.chunk_mode == "AUTO" else settings.chunk_size,
            "priority": settings.priority,
            "tags": [t.strip() for t in settings.tags.split(",") if t.strip()],
        }
        if settings.chunk_mode == "AUTO":
            spec["target_chunk_seconds"] = settings.target_chunk_seconds
        if output:
            spec["output"] = output

        upload = prefs.mode == "UPLOAD"
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        if upload:
            scratch = tempfile.mkdtemp(prefix="renderfarm-submit-")
            # Blender reports the save by the copy's name: make it plain
            # that the artist's own file was not saved.
            copy = os.path.join(scratch, blend_stem() + "-renderfarm-copy.blend")
        else:
            scratch = None
            folder = bpy.path.abspath(prefs.shared_folder) if prefs.shared_folder else ""
            if not folder:
                if not bpy.data.filepath:
                    return self.fail(
                        context,
                        "shared-drive mode needs a folder the workers see: save your file on the "
                        "shared drive, or set the Shared Folder in the add-on's preferences",
                    )
                folder = os.path.join(os.path.dirname(bpy.data.filepath), "renderfarm")
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                return self.fail(context, "cannot make the shared folder %s (%s); check the path and its permissions" % (folder, e))
            copy = os.path.join(folder, "%s-%s.blend" % (blend_stem(), stamp))
        try:
            # copy=True: the open file keeps its path and its unsaved state;
            # relative paths are remapped to the copy's folder.
            bpy.ops.wm.save_as_mainfile(filepath=copy, copy=True)
        except RuntimeError as e:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            return self.fail(context, "could not save a copy of the scene to %s (%s); check free space and permissions" % (copy, e))

        _job = SubmitJob(broker, spec, copy, upload, bpy.app.binary_path, PACK_SCRIPT, scratch)
        wm.renderfarm_status = "submitting %s" % spec["name"]
        if context.window is None:
            # No interface to keep alive (a script in the background): wait.
            _job.run()
            return self.finish(context)
        _job.start()
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        with _job.lock:
            done, stage = _job.done, _job.stage
        if not done:
            if context.window_manager.renderfarm_status != stage:
                context.window_manager.renderfarm_status = stage
                tag_redraw(context)
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self.finish(context)

    def cancel(self, context):
        # Blender ends modal operators when another file is opened: the
        # submission goes on unwatched (the recent list shows its render),
        # and the next one may start.
        global _job
        context.window_manager.event_timer_remove(self._timer)
        _job = None

    def finish(self, context):
        global _job
        job, _job = _job, None
        wm = context.window_manager
        for warning in job.warnings:
            self.report({"WARNING"}, warning)
        if job.error:
            return self.fail(context, job.error)
        render = job.render
        link = job.broker.dashboard_link(render["id"])
        message = 'Submitted render %s "%s": frames %s-%s; follow it at %s' % (
            render["id"],
            render.get("name", ""),
            render.get("frame_start"),
            render.get("frame_end"),
            link,
        )
        wm.renderfarm_status = message
        wm.renderfarm_last_link = link
        self.report({"INFO"}, message)
        if _recent is not None:
            _recent.refresh_soon()
        tag_redraw(context)
        return {"FINISHED"}

    def fail(self, context, message):
        context.window_manager.renderfarm_status = "Not submitted: " + message
        self.report({"ERROR"}, "Render farm: " + message)
        tag_redraw(context)
        return {"CANCELLED"}


class RENDERFARM_OT_refresh(bpy.types.Operator):
    """Ask the broker for your recent renders now"""

    bl_idname = "renderfarm.refresh"
    bl_label = "Refresh"

    def execute(self, context):
        if _recent is not None:
            _recent.refresh_soon()
        tag_redraw(context)
        return {"FINISHED"}


class RENDER_PT_renderfarm(bpy.types.Panel):
    bl_label = "Render Farm"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        scene = context.scene
        settings = scene.renderfarm
        prefs = preferences(context)
        wm = context.window_manager

        col = layout.column()
        col.label(text="%s (%s)" % (prefs.broker_url, "upload" if prefs.mode == "UPLOAD" else "shared drive"), icon="WORLD")
        col.prop(settings, "name")
        col.prop(settings, "priority")
        col.prop(settings, "chunk_mode", expand=True)
        if settings.chunk_mode == "AUTO":
            col.prop(settings, "target_chunk_seconds")
        else:
            col.prop(settings, "chunk_size")
        col.prop(settings, "tags")
        sub = col.column(align=True)
        sub.prop(scene, "frame_start", text="Frame Start")
        sub.prop(scene, "frame_end", text="End")
        col.prop(scene.render, "filepath", text="Output")
        refusal = movie_refusal(scene)
        if refusal:
            col.label(text="Movie output: choose an image format to submit", icon="ERROR")
        row = layout.row()
        row.scale_y = 1.4
        row.operator(RENDERFARM_OT_submit.bl_idname, icon="RENDER_ANIMATION")
        if wm.renderfarm_status:
            box = layout.box()
            for line in wrap(wm.renderfarm_status, 60):
                box.label(text=line)
            if wm.renderfarm_last_link and wm.renderfarm_status.startswith("Submitted"):
                box.operator("wm.url_open", text="Open in Dashboard", icon="URL").url = wm.renderfarm_last_link

        self.draw_recent(context, prefs)

    def draw_recent(self, context, prefs):
        layout = self.layout
        header = layout.row()
        header.label(text="Your Recent Renders")
        header.operator(RENDERFARM_OT_refresh.bl_idname, text="", icon="FILE_REFRESH")
        if _recent is None:
            return
        _recent.seen()
        _recent.follow((prefs.broker_url, prefs.token))
        # Drawn means looked at: only then does the list refresh, on its
        # own thread.
        if _recent.due():
            try:
                _recent.start(broker_from(prefs))
            except BrokerError as e:
                _recent.failed(str(e))
        with _recent.lock:
            renders, error, previews = list(_recent.renders), _recent.error, dict(_recent.previews)
        if error:
            for line in wrap(error, 60):
                layout.label(text=line, icon="ERROR")
        if not renders and not error:
            layout.label(text="None yet")
        for render in renders:
            box = layout.box()
            progress = render.get("progress", {})
            total = progress.get("frames_total") or 0
            done = progress.get("frames_done") or 0
            row = box.row()
            row.label(text=render.get("name", ""), icon="RENDER_RESULT")
            row.label(text="%s  %d/%d (%d%%)" % (render.get("status", ""), done, total, 100 * done // total if total else 0))
            row.operator("wm.url_open", text="", icon="URL").url = "%s/#/renders/%s" % (
                prefs.broker_url.strip().rstrip("/"),
                render["id"],
            )
            preview = previews.get(render["id"])
            if preview and _previews is not None:
                key = "%s-%s" % (render["id"], preview[1])
                if key not in _previews:
                    continue
                box.template_icon(icon_value=_previews[key].icon_id, scale=6.0)


def wrap(text, width):
    """Labels do not wrap: long messages are cut into lines at spaces."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = (line + " " + word) if line else word
    if line:
        lines.append(line)
    return lines


def apply_recent():
    """Application timer: loads new previews and redraws on news. Runs on
    the interface thread, never waits on the network."""
    global _seen_generation
    if _recent is None:
        return None
    with _recent.lock:
        generation = _recent.generation
        previews = dict(_recent.previews)
    if _recent.wanted():
        # The panel starts the refresh when it draws.
        try:
            tag_redraw()
        except AttributeError:
            pass
    if generation != _seen_generation:
        _seen_generation = generation
        if _previews is not None:
            for render_id, (path, digest) in previews.items():
                key = "%s-%s" % (render_id, digest)
                if key not in _previews and os.path.isfile(path):
                    try:
                        _previews.load(key, path, "IMAGE")
                    except (KeyError, RuntimeError):
                        pass
        try:
            tag_redraw()
        except AttributeError:
            pass
    return 0.5


classes = (
    RenderfarmPreferences,
    RenderfarmSceneSettings,
    RENDERFARM_OT_submit,
    RENDERFARM_OT_refresh,
    RENDER_PT_renderfarm,
)


def register():
    global _recent, _previews
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.renderfarm = PointerProperty(type=RenderfarmSceneSettings)
    bpy.types.WindowManager.renderfarm_status = StringProperty(options={"SKIP_SAVE"})
    bpy.types.WindowManager.renderfarm_last_link = StringProperty(options={"SKIP_SAVE"})
    _previews = bpy.utils.previews.new()
    _recent = Recent(os.path.join(tempfile.gettempdir(), "renderfarm-previews-%d" % os.getpid()))
    bpy.app.timers.register(apply_recent, first_interval=0.5, persistent=True)


def unregister():
    global _recent, _previews
    if bpy.app.timers.is_registered(apply_recent):
        bpy.app.timers.unregister(apply_recent)
    if _recent is not None:
        shutil.rmtree(_recent.folder, ignore_errors=True)
    _recent = None
    if _previews is not None:
        bpy.utils.previews.remove(_previews)
        _previews = None
    del bpy.types.WindowManager.renderfarm_last_link
    del bpy.types.WindowManager.renderfarm_status
    del bpy.types.Scene.renderfarm
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
