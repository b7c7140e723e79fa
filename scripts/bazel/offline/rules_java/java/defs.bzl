"""Stand-in for @rules_java//java:defs.bzl: the names @bazel_tools loads, forwarded to native rules.

bwtf builds no Java; @bazel_tools only needs these names to parse its JDK
toolchain packages, which are registered for every build.
"""

def java_binary(**attrs):
    native.java_binary(**attrs)

def java_import(**attrs):
    native.java_import(**attrs)

def java_library(**attrs):
    native.java_library(**attrs)

def java_proto_library(**attrs):
    native.java_proto_library(**attrs)

def java_runtime(**attrs):
    native.java_runtime(**attrs)

def java_toolchain(**attrs):
    native.java_toolchain(**attrs)
