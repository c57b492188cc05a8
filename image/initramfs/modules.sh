# Driver loading by device, sourced by the initramfs and the boot script: the modules whose
# PCI or virtio aliases match a device present, dependencies first. Under $MODULES: the .ko
# files, deps/NAME ("FILE.ko SYSFS-NAME" lines in load order, NAME last) and aliases
# ("CATEGORY MODULE EXTRAS PATTERN" lines in the order of image/modules.list; EXTRAS are
# comma-separated module names or "-").

# load_module NAME: NAME and its dependencies, each once (the kernel lists loaded modules in
# /sys/module; one the CPU cannot use, such as crc32c-intel under emulation, just fails).
load_module() {
    while read -r ko name; do
        [ -d "/sys/module/$name" ] || insmod "$MODULES/$ko" 2>/dev/null
    done < "$MODULES/deps/$1"
}

# matched CATEGORY SKIP: "MODULE EXTRAS" of the first module of CATEGORY not in SKIP (a
# space-framed list) whose alias matches a device present now.
matched() {
    while read -r category module extras pattern; do
        [ "$category" = "$1" ] || continue
        case "$2" in *" $module "*) continue ;; esac
        for alias in /sys/bus/pci/devices/*/modalias /sys/bus/virtio/devices/*/modalias; do
            [ -f "$alias" ] || continue
            read -r device < "$alias"
            # shellcheck disable=SC2254 # the pattern is a glob: the module's alias
            case "$device" in
                $pattern) echo "$module $extras"; return 0 ;;
            esac
        done
    done < "$MODULES/aliases"
}

# load_matched CATEGORY [UNTIL]: loads the matching modules one at a time, looking again after
# each (virtio devices appear only once virtio_pci is loaded); stops once UNTIL succeeds.
load_matched() {
    category=$1 until=$2 loaded=" "
    while next=$(matched "$category" "$loaded") && [ -n "$next" ]; do
        set -- $next
        load_module "$1"
        loaded="$loaded$1 "
        [ "$2" = - ] || for extra in $(echo "$2" | tr , ' '); do load_module "$extra"; done
        if [ -n "$until" ] && $until; then return 0; fi
    done
}
