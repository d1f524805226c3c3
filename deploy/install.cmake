# install.cmake -- install-time rules for the configuration and the systemd unit
#
# Run by `cmake --install` and cpack (install(SCRIPT) in CMakeLists.txt)
# with the prefix of that install, so that the paths follow it: with
# /usr (the .deb, or --prefix /usr) the configuration goes to /etc/sluice
# as Debian has it, with any other prefix to PREFIX/etc/sluice; the unit
# is written with the binary's and the configuration's paths. DESTDIR
# applies to both (file(INSTALL) honours it).
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  set(etc /etc)
else()
  set(etc "${CMAKE_INSTALL_PREFIX}/etc")
endif()
file(INSTALL DESTINATION "${etc}/sluice" TYPE FILE FILES "${SLUICE_SOURCE_DIR}/deploy/sluice.lua")

file(READ "${SLUICE_SOURCE_DIR}/deploy/systemd/sluice.service" unit)
string(REPLACE "/usr/bin/sluice" "${CMAKE_INSTALL_PREFIX}/bin/sluice" unit "${unit}")
string(REPLACE "/usr/share/doc/sluice/" "${CMAKE_INSTALL_PREFIX}/share/doc/sluice/" unit "${unit}")
string(REPLACE "/etc/sluice/" "${etc}/sluice/" unit "${unit}")
set(staged "${SLUICE_BINARY_DIR}/deploy/sluice.service")
file(WRITE "${staged}" "${unit}")
file(INSTALL DESTINATION "${CMAKE_INSTALL_PREFIX}/lib/systemd/system" TYPE FILE FILES "${staged}")
