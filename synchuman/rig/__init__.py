"""Rigging of a generated person: joints from multi-view body landmarks, bone-heat skin weights, a skinned
GLB with a sample animation (:func:`synchuman.rig.api.rig_glb`)."""
